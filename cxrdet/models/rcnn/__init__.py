"""torchvision's Faster R-CNN with its per-image host work batched (``model.rcnn_impl=batched``).

torchvision's eager detector runs per-image Python loops in the RPN's proposal filtering, the
matchers, the positive/negative samplers and the loss indexing; boolean indexing, one-argument
``torch.where``, ``.item()`` and NMS make the host wait for the GPU at each of them, so the GPU
idles while Python catches up. The modules here are subclasses of torchvision's, with the same
children and parameters (state-dict keys unchanged, so checkpoints and pretrained weights load
either way), that do the same work on whole batches with masks and padding:

- :mod:`.transform`: uint8 grey images normalised and expanded to three channels on the device,
  one batched operation when the images share a size (both implementations use it);
- :mod:`.matching`: anchor/proposal matching for a batch of padded ground truths;
- :mod:`.sampling`: the positive/negative sampler as random keys + top-k on masks;
- :mod:`.nms`: greedy NMS within groups, its cost per image independent of the batch (on a
  GPU with one wait per call);
- :mod:`.box_coder`, :mod:`.roi_align`: torchvision's box coder without copies from the host,
  its multi-scale ROI pooling with one wait instead of one per level;
- :mod:`.batched_rpn`: NMS per (image, level), losses with masks;
- :mod:`.batched_roi_heads`: fixed-size ROI samples, masked losses, NMS per (image, class);
- :mod:`.batched_rcnn`: the model that passes padded proposals between them;
- :mod:`.validation`: losses and detections of validation from one pass;
- :mod:`.compile`: ``torch.compile`` of backbone + FPN + RPN head (``model.compile=true``);
- :mod:`.syncs`: counting where a CUDA host would wait, on any device (benchmarks, tests).

torchvision's own modules stay the reference (``model.rcnn_impl=torchvision``), and
``tests/models/test_rcnn.py`` and ``test_rcnn_limits.py`` compare the two stage by stage.
"""

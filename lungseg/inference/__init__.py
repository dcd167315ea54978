"""From pixels to a mask: the segmenter (``LungSegmenter``), the backends that run the network,
reading inputs and the prediction folder's layout, post-processing, the quality score, the input
gate, left and right lungs, overlays. Nothing here imports training or evaluation."""

"""Pseudo-annotations, torch-free: regions of a category map, the thresholds that filter them, the one annotation
record, RLE, and COCO documents written and read as streams."""

"""Evaluation: mIoU of label maps, COCO segm AP, and the paper's benchmark presets and class lists."""

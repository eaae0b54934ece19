"""Everything that runs the model (the only torch code): loading, the decomposed last block, text, sliding
windows, PAMR and segmentation. It knows no run folder, COCO or FiftyOne. Importing this package imports nothing.
"""

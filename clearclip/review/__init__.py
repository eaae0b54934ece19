"""Everything that imports FiftyOne: the review dataset (sync), the App and its plugin, ground truth, exports,
calibration from review, and ClearCLIP as a FiftyOne model. Field names and the annotation <-> Detection
conversion live in ``fields``."""

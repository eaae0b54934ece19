"""Files and processes: atomic writes, image listing and decoding, label-map PNGs, pictures, thread counts."""

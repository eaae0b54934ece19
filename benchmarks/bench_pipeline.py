"""Pipeline overhead: end-to-end ``clearclip label`` images/s against model-only images/s on the same images.

Model-only decodes and prepares every image up front, then times ``segment_prepared`` alone.
End-to-end times ``label_folder`` (DataLoader decoding, inference, connected components, RLE, PNG and
JSON writing, merge) on the same folder of JPEGs. Both use a random-weight ViT-B/16.

    python benchmarks/bench_pipeline.py --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from PIL import Image

from clearclip import ClearCLIP
from clearclip.evaluation import BENCHMARKS
from clearclip.images import list_images, load_image
from clearclip.jobs import LabelJob
from clearclip.labeling import label_folder

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import synthetic_images  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="6 images; under 5 minutes on 2 cores")
    parser.add_argument("--images", type=int, default=None, help="number of 500x375 images (default: 6 quick, 24)")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    count = args.images or (6 if args.quick else 24)
    device = torch.device(args.device)
    precision = "fp32" if device.type == "cpu" else "bf16"

    model = open_clip.create_model("ViT-B-16", pretrained=None).to(device).eval()
    cc = ClearCLIP(model, open_clip.get_tokenizer("ViT-B-16"), precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, image in enumerate(synthetic_images(count, 375, 500)):
            Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=90)
        classes = BENCHMARKS["voc21"].vocabulary().to_strings()
        job = LabelJob(classes, model="ViT-B-16", pretrained=None, batch_size=args.batch_size)
        config = job.label_config()
        cc.segment(load_image(folder / "00000.jpg"), config.vocabulary)  # warm-up, text embeddings cached

        prepared = [cc.prepare(load_image(folder / f), config.settings) for f in list_images(folder)]
        start = time.perf_counter()
        for i in range(0, len(prepared), args.batch_size):
            cc.segment_prepared(prepared[i : i + args.batch_size], config.vocabulary, config.settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
        model_only = count / (time.perf_counter() - start)

        start = time.perf_counter()
        label_folder(cc, folder, Path(tmp) / "run", config, job.info(config), progress=False)
        end_to_end = count / (time.perf_counter() - start)

    print(f"{count} images 500x375, 21 classes, ViT-B-16 random weights, {device} {precision}, "
          f"batch {args.batch_size}, {config.workers()} decode workers")
    print(f"model only   {model_only:8.3f} images/s")
    print(f"end to end   {end_to_end:8.3f} images/s")
    print(f"ratio        {end_to_end / model_only:8.3f}  (end-to-end / model-only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

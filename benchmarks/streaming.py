"""Throughput and peak memory of one streamed training epoch over image folders far larger than an in-memory budget.

The budget is what the on-device batcher would hold: BUDGET_MIB of decoded uint8 3×64×64 images (16 MiB: 1365
images). The folders hold 10× and 100× that many JPEGs (64×64); to save time and disk they are hard links to a
few hundred unique files (the CIFAR-10 subset's images upscaled, when ../shared/data has it; seeded noise
otherwise), which the streaming source decodes like any other files. Each size runs in a fresh process, so the
peak resident memory of the training process (VmHWM) and of its DataLoader workers (ru_maxrss of the children,
the largest one) belong to that size alone; "sum" is the largest sampled sum of the process's and its workers'
resident memory (pages the workers share with it counted twice: an upper bound).

The measuring process runs with glibc's mmap threshold fixed at 1 MiB (MALLOC_MMAP_THRESHOLD_): by default glibc
raises that threshold after the first large free, and then keeps freed batch-sized blocks (the float copy of each
batch made on the CPU) on its heap; the training process's resident memory then wandered between about 280 MB and
1.2 GB over identical 10× epochs here, all of it returned by malloc_trim (no live tensor held it) and unrelated to
the dataset's size. `--malloc-default` measures with glibc's default behaviour.

    python benchmarks/streaming.py                 # 10× and 100×, 2 workers, batch 256: about 2-4 minutes
    python benchmarks/streaming.py --multiples 10 --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advtrain.data import load_dataset
from advtrain.train.stream import StreamSource

SIZE = 64
UNIQUE = 500  # distinct JPEG files behind the hard links
CLASSES = 10
CIFAR_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_subset.npz"


def unique_images() -> tuple[np.ndarray, str]:
    """UNIQUE images H×W×3 uint8 (64×64) and where they came from."""
    if CIFAR_SUBSET.exists():
        x = np.load(CIFAR_SUBSET)["x_train"][:UNIQUE].transpose(0, 2, 3, 1)
        return np.stack([np.asarray(Image.fromarray(i).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
                         for i in x]), "CIFAR-10 subset images upscaled to 64×64"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (UNIQUE, SIZE, SIZE, 3), dtype=np.uint8), "seeded noise images (no CIFAR subset)"


def build_folders(root: Path, n: int, images: np.ndarray) -> None:
    """ROOT/train/<class>/ with n files (hard links to the unique JPEGs) and a small ROOT/val/."""
    unique = root / "unique"
    unique.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(unique / f"{i}.jpg", quality=90)
    for split, count in (("train", n), ("val", CLASSES)):
        for c in range(CLASSES):
            (root / split / f"class{c:02d}").mkdir(parents=True)
        for i in range(count):
            os.link(unique / f"{i % len(images)}.jpg", root / split / f"class{i % CLASSES:02d}" / f"{i:07d}.jpg")


def resident_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def measure(root: Path, workers: int, batch: int) -> dict:
    """One epoch of the streaming source over ROOT (run in its own process)."""
    torch.set_num_threads(1)
    data = load_dataset("image_folder", root, image_size=SIZE, resize=SIZE, workers=workers,
                        random_resized_crop=True)
    source = StreamSource(data.train, data.train_transform(0, True), data.eval_transform, batch_size=batch,
                          seed=0, device=torch.device("cpu"), workers=workers)
    peak_sum, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            me = os.getpid()
            peak_sum[0] = max(peak_sum[0], resident_kib(me) + sum(resident_kib(c) for c in children(me)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start, images, checksum = time.perf_counter(), 0, 0.0
    for x, _, _ in source.epoch(0, 0):
        images += len(x)
        checksum += float(x[:, :, 0, 0].sum())  # touch every batch
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "main_peak_mib": hwm / 1024,
            "worker_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "sum_peak_mib": peak_sum[0] / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-mib", type=float, default=16.0)
    parser.add_argument("--multiples", default="10,100")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--malloc-default", action="store_true", help="leave glibc's mmap threshold dynamic")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one size in a fresh process
    args = parser.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.workers, args.batch)))
        return
    env = os.environ if args.malloc_default else {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    fits = int(args.budget_mib * 2**20 // (3 * SIZE * SIZE))
    images, origin = unique_images()
    print(f"in-memory budget {args.budget_mib:g} MiB of uint8 3×{SIZE}×{SIZE} = {fits} images; files: hard links to "
          f"{len(images)} unique JPEGs ({origin}); {args.workers} workers, batch {args.batch}, random-resized crop "
          f"+ flip; glibc mmap threshold {'dynamic' if args.malloc_default else '1 MiB'}", flush=True)
    print("| images | × budget | in memory would need | images/s | main peak RSS | largest worker peak | sum peak |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for multiple in (int(m) for m in args.multiples.split(",")):
        n = fits * multiple
        with tempfile.TemporaryDirectory() as tmp:
            build_folders(Path(tmp), n, images)
            done = subprocess.run([sys.executable, __file__, "--measure", tmp, "--workers", str(args.workers),
                                   "--batch", str(args.batch)], capture_output=True, text=True, check=True, env=env)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"| {r['images']} | {multiple}× | {n * 3 * SIZE * SIZE / 2**20:.0f} MiB | {r['images_per_s']:.0f} | "
              f"{r['main_peak_mib']:.0f} MiB | {r['worker_peak_mib']:.0f} MiB | {r['sum_peak_mib']:.0f} MiB |",
              flush=True)


if __name__ == "__main__":
    main()

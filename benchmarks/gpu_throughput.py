"""GPU path throughput of the harness engine (scale=paper), on CIFAR-sized synthetic tensors.

Measures training images/s of `harness.engine.train` — the same loop every suite uses — for
(1) the long-tail paper recipe: ResNet-32 on a CIFAR-10-LT-sized split (12,406 images at
ratio 100), batch 128, and (2) a CIFAR ResNet-18 epoch on 50,000 images at batch 128 and 512;
each in fp32 and bf16 autocast + channels-last, and with `torch.compile`. The data are random
uint8 tensors resident on the GPU (the hub cannot be reached from the GPU machine), which does
not change the arithmetic. It also counts host synchronisations inside the training step with
`torch.cuda.set_sync_debug_mode`: the engine reads the loss once per epoch and nothing else.

    python benchmarks/gpu_throughput.py [--no-compile]   # needs a CUDA device; prints a markdown table
"""

from __future__ import annotations

import sys
import time
import warnings

import torch

from harness.engine import Normalizer, train
from harness.kinds.loss import Loss
from harness.models import CifarResNet, CifarResNet18


class CE(Loss):
    def forward(self, logits, targets, index):
        return torch.nn.functional.cross_entropy(logits, targets)


def lt_counts(n_max: int = 5000, k: int = 10, ratio: float = 100) -> list[int]:
    return [int(n_max * ratio ** (-i / (k - 1))) for i in range(k)]


def synthetic(n_per_class: list[int], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    y = torch.cat([torch.full((n,), c, dtype=torch.int64, device=device) for c, n in enumerate(n_per_class)])
    x = torch.randint(0, 256, (len(y), 3, 32, 32), generator=g, device=device, dtype=torch.uint8)
    return x, y


def measure(build, x, y, *, batch_size: int, epochs: int, use_bf16: bool, compile_model: bool) -> float:
    recipe = {"epochs": epochs, "batch_size": batch_size, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "nesterov": False,
              "schedule": "step", "warmup_epochs": 0, "milestones": [], "lr_decay": 0.01, "crop_flip": True}
    normalizer = Normalizer.fit(x[:1000].cpu())
    torch.manual_seed(0)
    model = build()
    times: list[float] = []

    def on_epoch(epoch: int, total: int, loss: float) -> None:
        torch.cuda.synchronize()
        times.append(time.perf_counter())

    start = time.perf_counter()
    train(model, x, y, recipe=recipe, parts=[CE()], normalizer=normalizer, seed=0, device="cuda", on_epoch=on_epoch, compile_model=compile_model, amp=use_bf16)
    # the first epoch includes warm-up (cuDNN autotuning, compilation): report the later ones
    steady = [b - a for a, b in zip([start, *times], times)][1:]
    return len(y) / (sum(steady) / len(steady))


def count_syncs_per_epoch(x, y) -> int:
    recipe = {"epochs": 2, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4, "nesterov": False, "schedule": "onecycle", "warmup_epochs": 0, "crop_flip": True}
    normalizer = Normalizer.fit(x[:1000].cpu())
    model = CifarResNet(10, 3, 32)
    train(model, x[:512], y[:512], recipe={**recipe, "epochs": 1}, parts=[CE()], normalizer=normalizer, seed=0, device="cuda")  # warm-up
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(model, x, y, recipe=recipe, parts=[CE()], normalizer=normalizer, seed=0, device="cuda")
    torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    for w in syncs[:5]:
        print("  sync:", str(w.message).splitlines()[0], file=sys.stderr)
    return len(syncs) // recipe["epochs"]


MODES = ((False, False), (True, False), (True, True))  # (bf16 autocast, torch.compile)


def main() -> None:
    global MODES
    if "--no-compile" in sys.argv:
        MODES = tuple(m for m in MODES if not m[1])
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name()
    lt_x, lt_y = synthetic(lt_counts(), "cuda")
    c10_x, c10_y = synthetic([5000] * 10, "cuda")
    rows = []
    for label, build, x, y, bs, epochs in (
        ("ResNet-32, CIFAR-10-LT (12,406 img), batch 128", lambda: CifarResNet(10, 3, 32), lt_x, lt_y, 128, 4),
        ("ResNet-18, CIFAR-10 (50,000 img), batch 128", lambda: CifarResNet18(10, 3), c10_x, c10_y, 128, 3),
        ("ResNet-18, CIFAR-10 (50,000 img), batch 512", lambda: CifarResNet18(10, 3), c10_x, c10_y, 512, 3),
    ):
        for bf16, comp in MODES:
            ips = measure(build, x, y, batch_size=bs, epochs=epochs, use_bf16=bf16, compile_model=comp)
            mode = ("bf16 autocast" if bf16 else "fp32") + " + channels-last" + (" + torch.compile" if comp else "")
            rows.append((label, mode, ips, len(y) / ips))
            print(f"{label} | {mode} | {ips:,.0f} img/s | {len(y) / ips:.2f} s/epoch", file=sys.stderr, flush=True)
    syncs = count_syncs_per_epoch(lt_x, lt_y)
    print(f"device: {name}, torch {torch.__version__}\n")
    print("| workload | precision | images/s | s per epoch |\n|---|---|---|---|")
    for label, mode, ips, spe in rows:
        print(f"| {label} | {mode} | {ips:,.0f} | {spe:.2f} |")
    print(f"\nhost synchronisations per training epoch (ResNet-32, 97 steps): {syncs}")


if __name__ == "__main__":
    main()

"""`make demo`: the main job on a real model, through the real command line.

1. build torchvision resnet18 with seeded weights and save its state dict;
2. `neuralbridge convert` it to a TensorFlow SavedModel (validation table printed);
3. convert that SavedModel back to PyTorch (validated again);
4. check the round-trip .pt2, loaded with plain torch, against the original model.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

OUT = Path("demo-out")
BIN = Path(sys.executable).with_name("neuralbridge")


def run(*args: str) -> None:
    print(f"\n$ neuralbridge {shlex.join(args)}", flush=True)
    code = subprocess.call([str(BIN), *args])
    if code != 0:
        sys.exit(code)


def main() -> None:
    import torch
    import torchvision

    OUT.mkdir(exist_ok=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    weights = OUT / "resnet18.pt"
    torch.save(model.state_dict(), weights)
    print(f"built torchvision resnet18 (seed 0) -> {weights}")

    saved_model = OUT / "resnet18.savedmodel"
    run("convert", str(weights), "--model-class", "torchvision.models:resnet18",
        "--to", "tf", "-o", str(saved_model), "--force")
    round_trip = OUT / "resnet18_roundtrip.pt2"
    run("convert", str(saved_model), "--to", "torch", "-o", str(round_trip), "--force")

    loaded = (torch.export.load(round_trip).module() if round_trip.suffix == ".pt2"
              else torch.jit.load(round_trip))
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        want, got = model(x), loaded(x)
    error = float((want - got).abs().max())
    scale = float(want.abs().max())
    print(f"\nround trip torch -> tf -> torch, batch 3, plain torch: max abs error {error:.3g}, "
          f"relative to scale {error / scale:.3g}")


if __name__ == "__main__":
    main()

"""How long the notebook surface takes: %load_ext against `import torch`, and a %%prune cell.

Run: .venv/bin/python benchmarks/magic.py [--repeat 5]

Each timing runs in a fresh interpreter (imports are cached after the first), and
reports the median. The %%prune cell is timed on the quickstart MLP (64-256-128-10 on
scikit-learn's digits), its accuracy eval on the 450-sample test split included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

IMPORT_TORCH = """
import time
t = time.perf_counter()
import torch
print(time.perf_counter() - t)
"""

LOAD_EXT = """
import time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
t = time.perf_counter()
shell.run_line_magic("load_ext", "prune_magic")
print(time.perf_counter() - t)
"""

CELL = """
import time
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
shell = InteractiveShell.instance()
shell.run_cell('''
import torch
from torch import nn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
torch.set_num_threads(1)
torch.manual_seed(0)
d = load_digits()
X = torch.tensor(d.data, dtype=torch.float32) / 16
y = torch.tensor(d.target)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for epoch in range(5):
    for b in torch.randperm(len(X_train)).split(64):
        opt.zero_grad(); nn.functional.cross_entropy(model(X_train[b]), y_train[b]).backward(); opt.step()
''')
shell.run_line_magic("load_ext", "prune_magic")
times = []
for run in range(3):
    with capture_output():
        t = time.perf_counter()
        r = shell.run_cell('%%prune model --data "(X_test, y_test)" --example-input X_test[:1]\\nclip amount=0.8 scope=global\\n')
        times.append(time.perf_counter() - t)
    r.raise_error()
print(*times)
"""


def timed(code: str, repeat: int) -> list[list[float]]:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        runs.append([float(x) for x in out.split()])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    print(
        f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}, {repeat} fresh interpreters each"
    )
    torch_s = statistics.median(r[0] for r in timed(IMPORT_TORCH, repeat))
    load_s = statistics.median(r[0] for r in timed(LOAD_EXT, repeat))
    cells = timed(CELL, max(1, repeat // 2))
    first = statistics.median(r[0] for r in cells)
    again = statistics.median(min(r[1:]) for r in cells)
    print(f"import torch                          {torch_s * 1e3:8.1f} ms")
    print(
        f"%load_ext prune_magic                 {load_s * 1e3:8.1f} ms   = {load_s / torch_s:.3f} x import torch (goal <= 1.2)"
    )
    print(
        f"first %%prune cell (eval + MACs)      {first * 1e3:8.1f} ms   (includes first-use imports: matplotlib, torch's FLOP counter)"
    )
    print(f"%%prune cell again                    {again * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()

"""PyTorch build of the identical architecture, for timing against JAX only.

Never imported by the package. Runs as a server process (it may live in
another Python, e.g. a 3.11 venv with the CPU torch wheel) that bench/train_step.py
drives over stdin/stdout, so JAX and PyTorch runs can alternate:

  request  : {"mode": "train"|"infer", "dtype": "float32"|"bfloat16", "steps": N,
              "batch": B, "size": S, "widths": [...], "bottleneck": K}
  response : {"seconds_per_step": t, "params": n}
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F


class ConvBlock(nn.Sequential):
  def __init__(self, cin, cout):
    super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                     nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                     nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Decoder(nn.Module):
  def __init__(self, widths, bottleneck, out_channels, skips):
    super().__init__()
    self.skips = skips
    ups, blocks, cin = [], [], bottleneck
    for width in reversed(widths):
      ups.append(nn.ConvTranspose2d(cin, width, 2, stride=2))
      blocks.append(ConvBlock(2 * width if skips else width, width))
      cin = width
    self.ups, self.blocks = nn.ModuleList(ups), nn.ModuleList(blocks)
    self.head = nn.Conv2d(cin, out_channels, 1)

  def forward(self, x, skip_list):
    for up, block, skip in zip(self.ups, self.blocks, reversed(skip_list)):
      x = up(x)
      if self.skips:
        x = torch.cat([x, skip], 1)
      x = block(x)
    return self.head(x)


class MultiTaskUNet(nn.Module):
  def __init__(self, widths=(32, 64, 128, 256), bottleneck=512, num_classes=3):
    super().__init__()
    blocks, cin = [], 1
    for width in widths:
      blocks.append(ConvBlock(cin, width))
      cin = width
    self.down = nn.ModuleList(blocks)
    self.bottom = ConvBlock(cin, bottleneck)
    self.seg = Decoder(widths, bottleneck, 1, True)
    self.recon = Decoder(widths, bottleneck, 1, False)
    self.cls = nn.Sequential(nn.Linear(bottleneck, 256), nn.ReLU(), nn.Dropout(0.5),
                             nn.Linear(256, num_classes))

  def forward(self, x):
    skips = []
    for block in self.down:
      x = block(x)
      skips.append(x)
      x = F.max_pool2d(x, 2)
    x = self.bottom(x)
    return self.seg(x, skips), self.recon(x, skips), self.cls(x.mean((2, 3)))


def _loss(model, image, mask, label):
  seg, recon, cls = model(image)
  p = torch.sigmoid(seg)
  dice = 1 - (2 * (p * mask).sum() + 1) / (p.sum() + mask.sum() + 1)
  return (F.mse_loss(recon, image) + dice + F.binary_cross_entropy_with_logits(seg, mask)
          + F.cross_entropy(cls, label))


def run(request: dict) -> dict:
  torch.manual_seed(0)
  model = MultiTaskUNet(tuple(request['widths']), request['bottleneck'])
  model = model.to(memory_format=torch.channels_last)
  b, s = request['batch'], request['size']
  image = torch.rand(b, 1, s, s).to(memory_format=torch.channels_last)
  mask = (torch.rand(b, 1, s, s) > 0.9).float()
  label = torch.randint(0, 3, (b,))
  bf16 = request['dtype'] == 'bfloat16'
  optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

  def step():
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
      if request['mode'] == 'train':
        loss = _loss(model, image, mask, label)
      else:
        with torch.no_grad():
          model.eval()
          model(image)
          return
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

  model.train()
  step()  # warm-up
  start = time.perf_counter()
  for _ in range(request['steps']):
    step()
  seconds = (time.perf_counter() - start) / request['steps']
  return {'seconds_per_step': seconds,
          'params': sum(p.numel() for p in model.parameters()),
          'torch': torch.__version__, 'threads': torch.get_num_threads()}


def main():
  for line in sys.stdin:
    if line.strip():
      print(json.dumps(run(json.loads(line))), flush=True)


if __name__ == '__main__':
  main()

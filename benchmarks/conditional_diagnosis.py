"""Why a conditional SAGAN ignores its labels: train one variant of the conditional model and
track, every few steps, how often its samples show the digit asked for and what D's projection
term does. The conditional chapter reads the runs' results (``sagan_tutorial/results/
conditional.json``); each run was made by one command, for example::

    python benchmarks/conditional_diagnosis.py --name base_1k --steps 1000
    python benchmarks/conditional_diagnosis.py --name lrg4_1k --steps 1000 --lr-g 4e-4
    python benchmarks/conditional_diagnosis.py --name gtab10_1k --steps 1000 --g-table-lr-mult 10

Every 100 steps a row records the class accuracy of 200 samples (20 per class) of the EMA
generator and of G itself, read by the shipped digit classifier, and D's two logit terms on 500
held-out digits and 200 fakes: the unconditional part ``to_logit(h)`` and the projection
``embed(y) . phi(x)``, with D's implicit classifier ``argmax_k embed(k) . phi(x)``. The variants
change one thing at a time: G's learning rate, a learning-rate multiplier on G's class tables or
on D's class table, D's head (ReLU before pooling, a centred class table), the fakes' labels in
D's step (random instead of the real batch's), the class table's initialisation. Runs go to
``--out`` (default ``runs/conditional-diagnosis``), one JSON of rows per run.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

import sagan_tutorial as st
from sagan_tutorial.checkpoint import load_generator
from sagan_tutorial.config import TrainConfig
from sagan_tutorial.losses import discriminator_loss
from sagan_tutorial.metrics import digit_classifier, evaluation_report
from sagan_tutorial.models import Discriminator, GANConfig, Generator, _sn, sn_placement
from sagan_tutorial.train import Trainer

torch.set_num_threads(1)
p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--steps", type=int, default=1000)
p.add_argument("--every", type=int, default=100)
p.add_argument("--n-dis", type=int, default=1)
p.add_argument("--lr-d", type=float, default=4e-4)
p.add_argument("--lr-g", type=float, default=1e-4)
p.add_argument("--embed-init", default="model")  # model | normal | xavier | ortho
p.add_argument("--embed-sn", default="model")  # model | on | off
p.add_argument("--embed-lr-mult", type=float, default=1.0)
p.add_argument("--head", default="base")  # base | relu | mean
p.add_argument("--g-table-lr-mult", type=float, default=1.0)
p.add_argument("--proj-scale", type=float, default=1.0)
p.add_argument("--fake-labels", default="real")  # real | random
p.add_argument("--sn", default="port")
p.add_argument("--num-classes", type=int, default=10)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--eval", action="store_true")
p.add_argument(
    "--custom", action="store_true", help="use variant D class even if options are default"
)
p.add_argument("--out", default="runs/conditional-diagnosis", help="a folder for the runs")
a = p.parse_args()

OUT = Path(a.out) / a.name
RES = Path(a.out)
RES.mkdir(exist_ok=True, parents=True)


class VariantD(Discriminator):
    """Same trunk and to_logit; head variants for the projection term."""

    head = "base"
    centered = False

    def trunk(self, x):
        h = x
        for block in self.blocks:
            h = block(h)
            key = str(h.shape[-1])
            if key in self.attention:
                h = self.attention[key](h)
        return h

    def phi(self, h):
        if self.head == "relu":
            return torch.relu(h).sum(dim=(2, 3))
        if self.head == "mean":
            return h.mean(dim=(2, 3))
        if self.head == "relumean":
            return torch.relu(h).mean(dim=(2, 3))
        return h.sum(dim=(2, 3))

    def parts(self, x, y=None):
        h = self.trunk(x)
        lin = self.to_logit(h).flatten()
        phi = self.phi(h)
        return lin, phi

    def forward(self, x, y=None):
        from sagan_tutorial.models import _check_labels

        _check_labels(y, x.shape[0], self.config.num_classes)
        lin, phi = self.parts(x)
        if self.embed is None:
            return lin
        table = self.embed.weight
        if self.centered:
            table = table - table.mean(0, keepdim=True)
        return lin + a.proj_scale * (table[y] * phi).sum(dim=1)


def build(model):
    g = Generator(model)
    custom = a.custom or a.head != "base" or a.proj_scale != 1.0
    d = VariantD(model) if custom else Discriminator(model)
    if isinstance(d, VariantD):
        d.centered = a.head.startswith("centered")
        d.head = a.head.replace("centered", "") or "base"
    if model.num_classes and (a.embed_init != "model" or a.embed_sn != "model"):
        sn_on = sn_placement(model.sn)["d_body"] if a.embed_sn == "model" else a.embed_sn == "on"
        e = nn.Embedding(model.num_classes, d.embed.weight.shape[1])
        if a.embed_init == "xavier":
            nn.init.xavier_uniform_(e.weight)
        elif a.embed_init == "ortho":
            nn.init.orthogonal_(e.weight)
        elif a.embed_init.startswith("normal"):
            std = float(a.embed_init[6:] or 1.0)
            nn.init.normal_(e.weight, std=std)
        d.embed = _sn(e, sn_on)
    return g, d


def adam_with_faster(config, network, lr, faster, mult):
    """Adam over ``network``; the parameters whose names ``faster`` picks learn ``mult`` faster."""
    fast = [p for n, p in network.named_parameters() if faster(n)]
    ids = {id(p) for p in fast}
    rest = [p for p in network.parameters() if id(p) not in ids]
    return torch.optim.Adam(
        [{"params": rest}, {"params": fast, "lr": lr * mult}],
        lr=lr,
        betas=(config.beta1, config.beta2),
        fused=config.fused_adam or None,
    )


class VTrainer(Trainer):
    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        if a.embed_lr_mult != 1.0:  # D's class table
            self.opt_d = adam_with_faster(
                config, self.discriminator, config.lr_d, lambda n: n.startswith("embed."),
                a.embed_lr_mult,
            )  # fmt: skip
        if a.g_table_lr_mult != 1.0:  # G's conditional BatchNorm tables
            self.opt_g = adam_with_faster(
                config, self.generator, config.lr_g, lambda n: ".gamma." in n or ".beta." in n,
                a.g_table_lr_mult,
            )  # fmt: skip

    def d_step(self, images, labels):
        if a.fake_labels == "real":
            return super().d_step(images, labels)
        config = self.config
        real = self._inputs(images)
        y = labels.to(self.device)
        z, yf = self._noise(len(real))
        with torch.no_grad():
            fake = self.generator(z, yf)
        logits = self.d_train(torch.cat([real, fake]), torch.cat([y, yf]))
        real_logits, fake_logits = logits.float().chunk(2)
        loss = discriminator_loss(config.loss, real_logits, fake_logits)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss.detach()


# fixed evaluation material
classifier = digit_classifier(device="cpu")
test = st.load_dataset("mnist5k", split="test")
xr, yr = test.images[:500], test.labels[:500]
lab200 = torch.arange(10).repeat_interleave(20)


@torch.no_grad()
def d_parts(D, x):
    """(uncond logit (B,), pooled features phi (B,C), effective class table (K,C))"""
    was = D.training
    D.eval()
    try:
        if isinstance(D, VariantD):
            lin, phi = D.parts(x)
        else:
            caught = {}
            hk = D.to_logit.register_forward_hook(
                lambda m, i, o: caught.update(h=i[0], lin=o.flatten())
            )
            D(x, torch.zeros(len(x), dtype=torch.long))
            hk.remove()
            lin, phi = caught["lin"], caught["h"].sum(dim=(2, 3))
        table = D.embed.weight.detach().clone() * (a.proj_scale if isinstance(D, VariantD) else 1.0)
        if isinstance(D, VariantD) and D.centered:
            table = table - table.mean(0, keepdim=True)
    finally:
        D.train(was)
    return lin, phi, table


def accuracy(G, n_per=20, seed=123):
    lab = torch.arange(10).repeat_interleave(n_per)
    x = G.sample(len(lab), lab, seed=seed)
    with torch.no_grad():
        r = classifier(x).argmax(1)
    return (r == lab).float().mean().item(), x, lab


rows = []
t0 = time.perf_counter()
emb0 = None


def raw_embed(D):
    e = D.embed
    return (
        e.parametrizations.weight.original.detach().clone()
        if hasattr(e, "parametrizations")
        else e.weight.detach().clone()
    )


def callback(tr, row):
    global emb0
    if tr.step % a.every and tr.step != tr.config.steps:
        return
    D = tr.discriminator
    acc_ema, _, _ = accuracy(tr.ema)
    acc_g, xg, lg = accuracy(tr.generator)
    lin_r, phi_r, E = d_parts(D, xr)
    lin_f, phi_f, _ = d_parts(D, xg)
    proj_all_r = phi_r @ E.T  # (B, K)
    proj_all_f = phi_f @ E.T
    proj_r = proj_all_r.gather(1, yr[:, None]).squeeze(1)
    proj_f = proj_all_f.gather(1, lg[:, None]).squeeze(1)
    raw = raw_embed(D)
    Em = E.mean(0)
    common_r = phi_r @ Em
    sv = torch.linalg.svdvals(E)
    # D's implicit classifier: argmax_k embed(k).phi(x)
    r = {
        "step": tr.step,
        "time_s": round(time.perf_counter() - t0, 1),
        "d_loss": row["d_loss"],
        "g_loss": row["g_loss"],
        "acc_ema": acc_ema,
        "acc_g": acc_g,
        "lin_real_abs": lin_r.abs().mean().item(),
        "proj_real_abs": proj_r.abs().mean().item(),
        "lin_fake_abs": lin_f.abs().mean().item(),
        "proj_fake_abs": proj_f.abs().mean().item(),
        "lin_real_std": lin_r.std().item(),
        "proj_real_std": proj_r.std().item(),
        # label-dependent part: proj(x,y) - mean_k proj(x,k)
        "proj_real_margin": (proj_r - proj_all_r.mean(1)).mean().item(),
        "proj_fake_margin": (proj_f - proj_all_f.mean(1)).mean().item(),
        "proj_real_labelspread": proj_all_r.std(1).mean().item(),
        "d_cls_acc_real": (proj_all_r.argmax(1) == yr).float().mean().item(),
        "d_cls_acc_fake": (proj_all_f.argmax(1) == lg).float().mean().item(),
        "D_real_minus_fake_lin": (lin_r.mean() - lin_f.mean()).item(),
        "D_real_minus_fake_proj": (proj_r.mean() - proj_f.mean()).item(),
        "phi_norm": phi_r.norm(dim=1).mean().item(),
        "proj_common_real_abs": common_r.abs().mean().item(),
        "proj_class_real_abs": (proj_r - common_r).abs().mean().item(),
        "table_mean_row_norm": Em.norm().item(),
        "table_centered_row_norm": (E - Em).norm(dim=1).mean().item(),
        "table_sv1": sv[0].item(),
        "table_sv2": sv[1].item(),
        "table_sv_last": sv[-1].item(),
        "embed_row_norm": E.norm(dim=1).mean().item(),
        "embed_raw_drift": ((raw - emb0).norm() / emb0.norm()).item() if emb0 is not None else 0.0,
        "to_logit_wnorm": D.to_logit.weight.norm().item(),
    }
    # G's class tables spread
    spreads = [
        m.gamma.weight.std(0).mean().item()
        for m in tr.generator.modules()
        if hasattr(m, "gamma") and isinstance(m.gamma, nn.Embedding)
    ]
    r["g_gamma_spread"] = sum(spreads) / len(spreads) if spreads else 0.0
    rows.append(r)
    print(
        json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}),
        flush=True,
    )


config = TrainConfig(
    model=GANConfig(num_classes=a.num_classes, sn=a.sn),
    steps=a.steps,
    seed=a.seed,
    n_dis=a.n_dis,
    lr_d=a.lr_d,
    lr_g=a.lr_g,
    out=str(OUT),
    progress=False,
    tensorboard=False,
    sample_every=a.steps,
    checkpoint_every=0,
    log_every=a.every,
    device="cpu",
)
trainer = VTrainer(config, overwrite=True, callback=callback, networks=build)
emb0 = raw_embed(trainer.discriminator)
result = trainer.fit()
summary = {
    "package": st.__file__,
    "name": a.name,
    "args": vars(a),
    "seconds": round(result.seconds, 1),
    "rows": rows,
}
if a.eval:
    G = load_generator(result.checkpoint, device="cpu")
    rep = evaluation_report(G, n=1000, seed=0)
    summary["eval"] = rep
    print("EVAL", json.dumps({k: rep[k] for k in rep if "fid" in k or "accuracy" in k}), flush=True)
(RES / f"{a.name}.json").write_text(json.dumps(summary, indent=1))
print("done in", result.seconds)

"""UNIT losses and the training step (Liu et al. 2017; official UNIT ``gen_update``/``dis_update``).

Per step, with ``h`` = normal and ``l`` = lesion patches mapped to ``[-1, 1]``:

1. discriminator update (LSGAN): ``D(real) -> 1``, ``D(fake.detach()) -> 0`` for both domains;
2. generator update, the sum of (weights in :class:`~streamaug.models.unit.UNITConfig`)

   * ``gan_w``: LSGAN ``(D_l(x_{h->l}) - 1)^2 + (D_h(x_{l->h}) - 1)^2``;
   * ``recon_x_w``: L1 within-domain reconstruction ``|G_h(z_h) - x_h|`` (+ ``l``);
   * ``recon_kl_w``: ``mean(mu_h^2)`` (+ ``l``): UNIT's KL with unit-variance posterior;
   * ``recon_x_cyc_w``: L1 cycle ``|G_h(E_l(x_{h->l})) - x_h|`` (+ ``l``);
   * ``recon_kl_cyc_w``: ``mean(mu^2)`` of the re-encoded translations.

``z = mu + N(0, I)`` during training. Gupta et al. keep these defaults (§4.2).

With a DiffAugment ``policy`` (:mod:`streamaug.train.augment`; Zhao et al. 2020) every discriminator
input, real or translated, in both updates, is augmented first with fresh parameters from the
trainer's own generator (saved in :meth:`UNITTrainer.state_dict`, so a resumed run replays them).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch

from streamaug.models.unit import UNIT, UNITConfig
from streamaug.train.augment import diff_augment

__all__ = ["UNITTrainer", "lsgan_dis_loss", "lsgan_gen_loss"]


def lsgan_dis_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares discriminator loss summed over scales: ``mean((D(fake))^2) + mean((D(real)-1)^2)``."""
    return sum((f.float().pow(2).mean() + (r.float() - 1).pow(2).mean() for r, f in zip(real, fake)),
               torch.zeros((), device=real[0].device))


def lsgan_gen_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """Least-squares generator loss summed over scales: ``mean((D(fake) - 1)^2)``."""
    return sum(((f.float() - 1).pow(2).mean() for f in fake), torch.zeros((), device=fake[0].device))


def _kl(mu: torch.Tensor) -> torch.Tensor:
    """UNIT's KL(N(mu, I) || N(0, I)) up to constants and scale: ``mean(mu^2)``."""
    return mu.float().pow(2).mean()


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs().mean()


class UNITTrainer:
    """Holds the two Adam optimizers and runs one UNIT step: discriminators, then generators.

    Args:
        model: the :class:`~streamaug.models.unit.UNIT` to train (already on its device/dtype).
        config: loss weights and Adam settings; defaults to ``model.config``.
        autocast_dtype: e.g. ``torch.bfloat16`` to run forward passes under ``torch.autocast`` on the
            model's device (no grad scaler needed for bf16). ``None``: plain precision.
        diffaug: DiffAugment policies applied before the discriminators (any of ``"color"``,
            ``"translation"``, ``"cutout"``); empty: none.
        seed: seeds the DiffAugment generator.

    Examples:
        >>> from streamaug.models.unit import unit_preset
        >>> _ = torch.manual_seed(0)
        >>> model = UNIT(unit_preset("tiny"))
        >>> trainer = UNITTrainer(model)
        >>> x_h, x_l = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
        >>> losses = trainer.step(x_h, x_l)
        >>> sorted(losses), trainer.steps
        (['cyc', 'dis', 'gen', 'gen_adv', 'kl', 'kl_cyc', 'recon'], 1)
    """

    def __init__(self, model: UNIT, config: UNITConfig | None = None, *,
                 autocast_dtype: torch.dtype | None = None, diffaug: tuple[str, ...] | list[str] = (),
                 seed: int = 0) -> None:
        self.model = model
        self.config = config or model.config
        self.autocast_dtype = autocast_dtype
        self.diffaug = tuple(diffaug)
        self.aug_rng = torch.Generator().manual_seed(seed)
        c = self.config
        kw: dict[str, Any] = dict(lr=c.lr, betas=(c.beta1, c.beta2), weight_decay=c.weight_decay)
        self.opt_gen = torch.optim.Adam(model.generator_parameters(), **kw)
        self.opt_dis = torch.optim.Adam(model.discriminator_parameters(), **kw)
        self.steps = 0

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        dev = next(self.model.parameters()).device.type
        return torch.autocast(dev, dtype=self.autocast_dtype)

    def _dis(self, domain: str, x: torch.Tensor) -> list[torch.Tensor]:
        """Discriminator ``domain``'s score maps of ``x``, DiffAugment'ed first when a policy is set."""
        dis = self.model.dis_h if domain == "h" else self.model.dis_l
        return dis(diff_augment(x, self.diffaug, self.aug_rng))

    def _translate_noisy(self, x_h: torch.Tensor, x_l: torch.Tensor):
        m = self.model
        mu_h, mu_l = m._encode(x_h, "h"), m._encode(x_l, "l")
        z_h = mu_h + torch.randn_like(mu_h)
        z_l = mu_l + torch.randn_like(mu_l)
        return mu_h, mu_l, z_h, z_l

    def generator_losses(self, x_h: torch.Tensor, x_l: torch.Tensor) -> dict[str, torch.Tensor]:
        """All generator-side loss terms (unweighted) and the weighted total ``"gen"``.

        Args:
            x_h: ``(B, C, P, P)`` normal patches in ``[-1, 1]``.
            x_l: ``(B, C, P, P)`` lesion patches in ``[-1, 1]``.

        Returns:
            Dict of scalar tensors: ``gen`` (weighted total), ``gen_adv``, ``recon``, ``kl``,
            ``cyc``, ``kl_cyc``.
        """
        m, c = self.model, self.config
        mu_h, mu_l, z_h, z_l = self._translate_noisy(x_h, x_l)
        x_hh, x_ll = m._decode(z_h, "h"), m._decode(z_l, "l")  # within-domain reconstruction
        x_hl, x_lh = m._decode(z_h, "l"), m._decode(z_l, "h")  # cross-domain translation
        mu_hl, mu_lh = m._encode(x_hl, "l"), m._encode(x_lh, "h")  # re-encode translations
        x_hlh = m._decode(mu_hl + torch.randn_like(mu_hl), "h")
        x_lhl = m._decode(mu_lh + torch.randn_like(mu_lh), "l")
        adv = lsgan_gen_loss(self._dis("l", x_hl)) + lsgan_gen_loss(self._dis("h", x_lh))
        recon = _l1(x_hh, x_h) + _l1(x_ll, x_l)
        kl = _kl(mu_h) + _kl(mu_l)
        cyc = _l1(x_hlh, x_h) + _l1(x_lhl, x_l)
        kl_cyc = _kl(mu_hl) + _kl(mu_lh)
        total = (c.gan_w * adv + c.recon_x_w * recon + c.recon_kl_w * kl
                 + c.recon_x_cyc_w * cyc + c.recon_kl_cyc_w * kl_cyc)
        return {"gen": total, "gen_adv": adv, "recon": recon, "kl": kl, "cyc": cyc, "kl_cyc": kl_cyc}

    def discriminator_loss(self, x_h: torch.Tensor, x_l: torch.Tensor) -> torch.Tensor:
        """Weighted LSGAN loss of both discriminators on real vs. (detached) translated patches in ``[-1, 1]``."""
        m = self.model
        with torch.no_grad():
            _, _, z_h, z_l = self._translate_noisy(x_h, x_l)
            x_hl, x_lh = m._decode(z_h, "l"), m._decode(z_l, "h")
        loss = (lsgan_dis_loss(self._dis("l", x_l), self._dis("l", x_hl))
                + lsgan_dis_loss(self._dis("h", x_h), self._dis("h", x_lh)))
        return self.config.gan_w * loss

    def step(self, x_normal: torch.Tensor, x_lesion: torch.Tensor) -> dict[str, float]:
        """One training step (discriminator update, then generator update), as in official UNIT.

        Args:
            x_normal: ``(B, 1, P, P)`` normal patches in ``[0, 1]`` (domain ``h``).
            x_lesion: ``(B, 1, P, P)`` lesion patches in ``[0, 1]`` (domain ``l``); ``B`` may differ.

        Returns:
            Python floats: ``dis``, ``gen`` (weighted totals) and the unweighted terms ``gen_adv``,
            ``recon``, ``kl``, ``cyc``, ``kl_cyc``.
        """
        m = self.model
        m._check(x_normal)
        m._check(x_lesion)
        m.train()
        x_h, x_l = x_normal * 2 - 1, x_lesion * 2 - 1

        self.opt_dis.zero_grad(set_to_none=True)
        with self._autocast():
            d_loss = self.discriminator_loss(x_h, x_l)
        d_loss.backward()
        self.opt_dis.step()

        self.opt_gen.zero_grad(set_to_none=True)
        for p in m.discriminator_parameters():  # no D grads during the G step
            p.requires_grad_(False)
        try:
            with self._autocast():
                g = self.generator_losses(x_h, x_l)
            g["gen"].backward()
        finally:
            for p in m.discriminator_parameters():
                p.requires_grad_(True)
        self.opt_gen.step()
        self.steps += 1
        out = {k: float(v.detach()) for k, v in g.items()}
        out["dis"] = float(d_loss.detach())
        return out

    def state_dict(self) -> dict[str, Any]:
        """Optimizer states, step count and DiffAugment generator state (model weights are saved separately)."""
        return {"opt_gen": self.opt_gen.state_dict(), "opt_dis": self.opt_dis.state_dict(), "steps": self.steps,
                "aug_rng": self.aug_rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (after loading the model weights).

        The state is deep-copied: torch optimizers would otherwise share tensors with the source
        (e.g. another live trainer), and its steps would silently change this one's moments.
        """
        state = copy.deepcopy(state)
        self.opt_gen.load_state_dict(state["opt_gen"])
        self.opt_dis.load_state_dict(state["opt_dis"])
        self.steps = int(state["steps"])
        if "aug_rng" in state:  # absent in checkpoints written before DiffAugment
            self.aug_rng.set_state(state["aug_rng"])

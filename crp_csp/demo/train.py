"""Train the demo world's classifier, CLIP and SAE from scratch and write their weights.

Usage: ``python -m crp_csp.demo.train [--out DIR] [--only classifier|clip|sae]``. Seeded; on 2 CPU
cores the whole run takes about 20 minutes (the SAE about 2 of them; it needs the classifier, which
``--only sae`` reads from ``--out``). The weights land in ``crp_csp/demo/weights`` by default.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .captions import sample_caption, scene_codes
from .data import DemoWorldDataset
from .evaluate import CLIP_MEAN, CLIP_STD, classifier_accuracy, zero_shot_accuracy
from .models import DEMO_SAE_LAYER, WEIGHTS_DIR, DemoClassifier, _load_state, build_demo_clip, demo_tokenizer
from .world import render_scene, sample_scene



def _render_split(dataset: DemoWorldDataset) -> torch.Tensor:
    return torch.from_numpy(np.stack([dataset.image_uint8(i) for i in range(len(dataset))])).permute(0, 3, 1, 2)


def train_classifier(steps: int = 1500, batch_size: int = 128, seed: int = 0) -> DemoClassifier:
    """Train the demo classifier on the (confounded) training split."""
    torch.manual_seed(seed)
    dataset = DemoWorldDataset("train")
    images = _render_split(dataset)
    labels = torch.from_numpy(dataset.labels())
    model = DemoClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(steps), desc="classifier"):
        batch = torch.randint(len(dataset), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(images[batch].float() / 255.0), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def _clip_pool(size: int, seed: int) -> tuple[torch.Tensor, list]:
    """Unconfounded renders for the CLIP (its data is not the classifier's)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(size)]
    seeds = rng.integers(0, 2**31 - 1, size=size)
    images = np.stack([render_scene(s, int(k)) for s, k in zip(scenes, seeds)])
    return torch.from_numpy(images).permute(0, 3, 1, 2), scenes


def multi_positive_clip_loss(image_emb, text_emb, logit_scale, matches) -> torch.Tensor:
    """Contrastive loss where every caption true of an image is a positive of it (soft targets)."""
    logits = logit_scale * image_emb @ text_emb.T
    targets = matches.float()
    loss_images = -(targets / targets.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    loss_texts = -(targets / targets.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
    return (loss_images + loss_texts) / 2


def train_clip(steps: int = 3000, batch_size: int = 256, pool_size: int = 30_000, seed: int = 0):
    """Train the demo CLIP contrastively on captions of unconfounded renders."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, scenes = _clip_pool(pool_size, seed=10_000 + seed)
    codes = torch.from_numpy(np.stack([scene_codes(s) for s in scenes]))
    tokenizer = demo_tokenizer()
    model = build_demo_clip()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=2e-3,
    )
    warmup = 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    progress = tqdm(range(steps), desc="clip")
    for _ in progress:
        batch = torch.from_numpy(rng.integers(pool_size, size=batch_size))
        captions, caption_codes = zip(*(sample_caption(scenes[i], rng) for i in batch.tolist()))
        caption_codes = torch.from_numpy(np.stack(caption_codes))
        batch_codes = codes[batch]
        matches = ((caption_codes[None] == -1) | (caption_codes[None] == batch_codes[:, None])).all(-1)
        pixels = (images[batch].float() / 255.0 - CLIP_MEAN) / CLIP_STD
        image_emb, text_emb, logit_scale = model(pixels, tokenizer(list(captions)))
        loss = multi_positive_clip_loss(image_emb, text_emb, logit_scale, matches)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        progress.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def train_demo_sae(classifier: DemoClassifier, images: int = 4000, epochs: int = 10, seed: int = 0,
                   heldout_images: int = 1000):
    """Fit the demo SAE (TopK, 256 latents, k = 8) on :data:`DEMO_SAE_LAYER` at every position of the
    first ``images`` training samples; returns ``(sae, config, quality on the held-out split)``."""
    from ..units import SAEConfig, fit_sae, layer_rows, sae_quality

    config = SAEConfig(kind="topk", nb_concepts=256, top_k=8, epochs=epochs, seed=seed)
    classifier = classifier.eval()
    train = _render_split(DemoWorldDataset("train", size=images)).float() / 255.0
    sae, _ = fit_sae(layer_rows(classifier, DEMO_SAE_LAYER, train), config, verbose=True)
    heldout = _render_split(DemoWorldDataset("heldout", size=heldout_images)).float() / 255.0
    return sae, config, sae_quality(sae, layer_rows(classifier, DEMO_SAE_LAYER, heldout))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for classifier.pt, clip.pt and sae.pt")
    parser.add_argument("--only", choices=("classifier", "clip", "sae"), help="train one model only")
    parser.add_argument("--classifier-steps", type=int, default=1500)
    parser.add_argument("--clip-steps", type=int, default=2000)
    parser.add_argument("--sae-images", type=int, default=4000, help="training images for the SAE (64 rows each)")
    parser.add_argument("--sae-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {}
    if args.only in (None, "classifier"):
        start = time.perf_counter()
        classifier = train_classifier(steps=args.classifier_steps, seed=args.seed)
        torch.save(classifier.state_dict(), args.out / "classifier.pt")
        report["classifier_train_s"] = round(time.perf_counter() - start, 1)
        report["classifier_heldout_accuracy"] = classifier_accuracy(classifier)
    if args.only in (None, "clip"):
        start = time.perf_counter()
        clip = train_clip(steps=args.clip_steps, seed=args.seed)
        # half precision keeps the shipped weights small; loading converts back to float32
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()},
                   args.out / "clip.pt")
        report["clip_train_s"] = round(time.perf_counter() - start, 1)
        clip.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                              for k, v in clip.state_dict().items()})
        report["zero_shot_accuracy"] = zero_shot_accuracy(clip)
    if args.only in (None, "sae"):
        from ..units import save_sae

        start = time.perf_counter()
        if args.only == "sae":
            classifier = DemoClassifier()
            classifier.load_state_dict(_load_state(args.out / "classifier.pt"))
        sae, config, quality = train_demo_sae(classifier, images=args.sae_images, epochs=args.sae_epochs,
                                              seed=args.seed)
        save_sae(sae, config, args.out / "sae.pt", layer=DEMO_SAE_LAYER, train_images=args.sae_images,
                 heldout=quality)
        report["sae_train_s"] = round(time.perf_counter() - start, 1)
        report["sae_heldout"] = quality
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

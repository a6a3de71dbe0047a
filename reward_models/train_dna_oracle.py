"""Train the two DNA oracles shipped in reward_models/dna/{ft,eval}.

    python -m reward_models.train_dna_oracle --which both

They are trained on DISJOINT data, with different seeds:
  * ft   (the reward DRAKES fine-tunes against): the even-indexed half of the `training` split;
  * eval (held out, scores the generated samples): the odd-indexed half of `training` plus all of
    `validation`.
Fine-tuning pushes samples towards whatever the ft oracle over-rewards, including its mistakes; an
evaluation oracle fitted to the same data would share those mistakes and report reward hacking as
success. Both are measured on the `test` split (chr2), which neither saw: 4-way accuracy and the
AUROC of the reward for HepG2 vs. the rest. Each trains in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reward_models.dna_oracle import SHIPPED, DnaOracle, OracleConfig, evaluate_oracle, reverse_complement
from rlft.data.dna import DnaSet, encode, load_dna, one_hot
from rlft.progress import print_summary, progress_bar


@dataclass
class TrainSettings:
    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4


# which -> (description of its training data, seed)
RECIPES = {
    "ft": ("even-indexed half of the training split", 0),
    "eval": ("odd-indexed half of the training split + the validation split", 1),
}


def training_set(dna: DnaSet, which: str) -> DnaSet:
    """The rows each oracle trains on (disjoint: see the module docstring)."""
    train = dna.subset(split="training")
    if which == "ft":
        return train.select(list(range(0, len(train), 2)))
    if which == "eval":
        odd = train.select(list(range(1, len(train), 2)))
        validation = dna.subset(split="validation")
        return DnaSet(odd.sequences + validation.sequences, odd.cell_types + validation.cell_types,
                      odd.splits + validation.splits)
    raise ValueError(f"unknown oracle {which!r}; expected one of {sorted(RECIPES)}")


def random_strand(onehot: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each sequence as given or reverse-complemented, at random: training on one random strand
    costs half of the two-strand average that `DnaOracle.forward` (the reward) computes."""
    flip = torch.rand(len(onehot), generator=generator) < 0.5
    return torch.where(flip[:, None, None], reverse_complement(onehot), onehot)


def fit(oracle: DnaOracle, data: DnaSet, settings: TrainSettings, seed: int, label: str) -> None:
    """Cross-entropy with AdamW and a cosine learning-rate decay."""
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = one_hot(encode(data.sequences)), data.labels()
    steps_per_epoch = (len(data) + settings.batch_size - 1) // settings.batch_size
    total = settings.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(oracle.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    loss_fn = nn.CrossEntropyLoss()
    oracle.train()
    with progress_bar(f"oracle {label}", total) as advance:
        for epoch in range(settings.epochs):
            order = torch.randperm(len(data), generator=generator)
            for step in range(steps_per_epoch):
                batch = order[step * settings.batch_size:(step + 1) * settings.batch_size]
                loss = loss_fn(oracle.strand_logits(random_strand(inputs[batch], generator)), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                advance(1, epoch=epoch + 1, loss=loss.item())
    oracle.eval()


def train_one(which: str, out: Path, settings: TrainSettings) -> dict[str, object]:
    description, seed = RECIPES[which]
    dna = load_dna()
    data = training_set(dna, which)
    torch.manual_seed(seed)
    oracle = DnaOracle(OracleConfig())
    start = time.perf_counter()
    fit(oracle, data, settings, seed, which)
    seconds = time.perf_counter() - start
    test = evaluate_oracle(oracle, dna.subset(split="test"))
    facts = {
        "trained_on": description, "train_sequences": len(data), "seed": seed, "epochs": settings.epochs,
        "train_seconds": round(seconds, 1), "evaluated_on": "test split (chr2), seen by neither oracle",
        "test_accuracy": round(test["accuracy"], 4), "test_hepg2_auroc": round(test["auroc"], 4),
        "command": f"python -m reward_models.train_dna_oracle --which {which}",
    }
    oracle.save(out / which, facts)
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--which", choices=["ft", "eval", "both"], default="both")
    parser.add_argument("--out", type=Path, default=SHIPPED, help="writes <out>/ft and <out>/eval")
    parser.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    # Measured: with other jobs on a 2-core machine, 2 threads ran 4-6x slower per step than 1.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = TrainSettings(epochs=args.epochs)
    for which in (["ft", "eval"] if args.which == "both" else [args.which]):
        facts = train_one(which, args.out, settings)
        print_summary({**facts, "saved_to": str(args.out / which)}, title=f"DNA oracle '{which}'")


if __name__ == "__main__":
    main()

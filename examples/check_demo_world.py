"""Check the demo world's shipped models on held-out renders and print one JSON object.

Run: ``python examples/check_demo_world.py``
"""
import json

import numpy as np

from crp_csp.demo import CONFOUNDERS, DemoWorldDataset, load_demo_classifier, load_demo_clip
from crp_csp.demo.evaluate import classifier_accuracy, zero_shot_accuracy
from crp_csp.demo.models import WEIGHTS_DIR


def cooccurrence(split: str) -> list[dict]:
    dataset = DemoWorldDataset(split)
    scenes = [dataset.scene(i) for i in range(len(dataset))]
    rows = []
    for c in CONFOUNDERS:
        with_class = [s for s in scenes if getattr(s, c.class_family) == c.class_value]
        share = np.mean([getattr(s, c.incidental_family) == c.incidental_value for s in with_class])
        rows.append({"class_attribute": c.class_value, "incidental_attribute": c.incidental_value,
                     "split": split, "cooccurrence": round(float(share), 4)})
    return rows


def main() -> None:
    report = {
        "classifier_heldout_accuracy": classifier_accuracy(load_demo_classifier()),
        "zero_shot_accuracy": zero_shot_accuracy(load_demo_clip()),
        "confounders": cooccurrence("train"),
        "confounders_probe": cooccurrence("probe"),
        "confounders_heldout": cooccurrence("heldout"),
        "weights_bytes": sum(path.stat().st_size for path in WEIGHTS_DIR.glob("*.pt")),
        "weights_files": sorted(path.name for path in WEIGHTS_DIR.glob("*.pt")),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

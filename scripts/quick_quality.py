"""Development aid: event-level quality of detect() on the synthetic benchmark (not a test)."""
import sys
import time

import numpy as np
import pandas as pd

from anomaly_pipelines import detect
from anomaly_pipelines.core.sources.synthetic import generate_usage

customers = int(sys.argv[1]) if len(sys.argv) > 1 else 12
seed = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 11
d = generate_usage(customers=customers, days=730, seed=seed)
u = d.usage.groupby(["customer_id", "timestamp"], as_index=False)["cost"].sum()
t = time.time()
s = detect(u, {"lstm": {"epochs": 10}})
print("detect seconds", round(time.time() - t, 1))
s = s.sort_values(["customer_id", "timestamp"]).reset_index(drop=True)
label = np.zeros(len(s), bool)
for _, inc in d.incidents.iterrows():
    label |= ((s.customer_id == inc.customer_id) & (s.timestamp >= inc.start) & (s.timestamp <= inc.end)).to_numpy()
s["label"] = label


def events(mask: np.ndarray, cust: np.ndarray) -> list[tuple[int, int]]:
    out, start = [], None
    for i, m in enumerate(mask):
        if m and (start is None or cust[i] != cust[i - 1]):
            if start is not None:
                out.append((start, i - 1))
            start = i
        elif not m and start is not None:
            out.append((start, i - 1))
            start = None
    if start is not None:
        out.append((start, len(mask) - 1))
    return out


def evaluate(flag: np.ndarray, name: str) -> None:
    cust = s.customer_id.to_numpy()
    lab_ev = events(label, cust)
    det_ev = events(flag, cust)
    found = sum(flag[a : b + 1].any() for a, b in lab_ev)
    false = sum(not label[a : b + 1].any() for a, b in det_ev)
    p = (len(det_ev) - false) / max(len(det_ev), 1)
    r = found / max(len(lab_ev), 1)
    f1 = 2 * p * r / max(p + r, 1e-9)
    print(f"{name:28s} events={len(lab_ev)} found={found} det={len(det_ev)} false={false} P={p:.2f} R={r:.2f} F1={f1:.2f}")


evaluate(s.is_anomaly.to_numpy(), "hybrid")
for comp in ["residual", "lstm", "isolation_forest", "local_outlier_factor", "decrease"]:
    evaluate(s.reasons.str.contains(comp).to_numpy(), comp)
evaluate((s.lstm_flag | s.decrease_flag).to_numpy(), "notebook-ish (ours lstm)")
kinds = d.incidents.assign(found=[s[(s.customer_id == i.customer_id) & (s.timestamp >= i.start) & (s.timestamp <= i.end)].is_anomaly.any() for _, i in d.incidents.iterrows()])
print(kinds.groupby("kind").found.agg(["sum", "count"]))
if "-v" in sys.argv:
    pd.set_option("display.width", 250)
    cols = ["customer_id", "timestamp", "cost", "expected_cost", "hybrid_score", "residual_score", "reasons"]
    print(s[s.is_anomaly & ~s.label][cols].to_string())
    for _, i in kinds[~kinds.found].iterrows():
        m = (s.customer_id == i.customer_id) & (s.timestamp >= i.start) & (s.timestamp <= i.end)
        print(i.kind, i.service); print(s[m][cols].to_string())

import time, numpy as np, pandas as pd, sys
from anomaly_pipelines import detect
from anomaly_pipelines.core.sources.synthetic import generate_usage
d = generate_usage(customers=8, days=400, seed=3)
u = d.usage.groupby(["customer_id","timestamp"], as_index=False)["cost"].sum()
t=time.time(); s = detect(u, {"lstm": {"epochs": 10}}); print("detect", time.time()-t)
print("flag rate", s.is_anomaly.mean())
hit=0
lab=np.zeros(len(s),bool)
for _, inc in d.incidents.iterrows():
    m = (s.customer_id==inc.customer_id)&(s.timestamp>=inc.start)&(s.timestamp<=inc.end)
    lab|=m.to_numpy()
    hit+=s[m].is_anomaly.any()
    print(inc.kind, s[m].is_anomaly.any(), s[m].hybrid_score.max().round(2), s[m].reasons.tolist()[:3])
print("recall", hit/len(d.incidents), "false flagged days", (s.is_anomaly & ~lab).sum())
print(s[s.is_anomaly & ~lab][["customer_id","timestamp","cost","expected_cost","hybrid_score","reasons"]].to_string())

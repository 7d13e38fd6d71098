"""Probe (2026-11-30): classical models on the CyCIF strips (leave one strip out), train and test accuracy,
on the range-scale marker values clipped to [0, 1.5] (what the language model's words carry).

    python benchmarks/probes/classical_strips.py

Printed results: benchmarks/probes/results.md.
"""
import numpy as np, pandas as pd, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from spatial2sentence.bench.datasets import load_scimap
from spatial2sentence.normalize import Normalizer
ds=load_scimap(Path('../shared/data')); df=ds.df; M=ds.markers
res={}
for im in pd.unique(df.image):
    tr=df[df.image!=im]; te=df[df.image==im]
    norm=Normalizer().fit(tr[M].to_numpy(float),M)
    lo,hi=norm.range_bounds(M)
    f=lambda d: np.clip((norm.transform(d[M].to_numpy(float),M)-lo)/(hi-lo),0,1.5)
    xtr,xte=f(tr),f(te); ytr=tr.cell_type.to_numpy(); yte=te.cell_type.to_numpy()
    for name,c in [('logreg',LogisticRegression(max_iter=3000)),('logreg C=10',LogisticRegression(C=10,max_iter=3000)),
                   ('mlp64',MLPClassifier((64,),max_iter=500,random_state=0)),('mlp64 a=1',MLPClassifier((64,),alpha=1.0,max_iter=500,random_state=0)),
                   ('hgb',HistGradientBoostingClassifier(random_state=0))]:
        c.fit(xtr,ytr); res.setdefault(name,[]).append(((c.predict(xtr)==ytr).mean(),(c.predict(xte)==yte).mean()))
for k,v in res.items():
    v=np.array(v); print(f'{k:12s} train {v[:,0].mean():.3f} test {v[:,1].mean():.3f}', np.round(v[:,1],3))
print(df.cell_type.value_counts().head(8))

"""Probe (2026-11-30): what a linear model reads from the values the words carry (CyCIF strips and toy crops,
leave one image out): every marker's clipped value against the v2 sentence (words above 0.05 only, each
with a presence flag). The presence flag at a threshold is what loses accuracy (CyCIF 0.786 -> 0.740).

    python benchmarks/probes/value_features.py

Printed results: benchmarks/probes/results.md.
"""
import numpy as np, pandas as pd, warnings
warnings.simplefilter("ignore")
from pathlib import Path
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from spatial2sentence.bench.datasets import load_scimap, load_damond_toy
from spatial2sentence.normalize import Normalizer
for ds in (load_scimap(Path('../shared/data')), load_damond_toy(Path('../shared/data'))):
    df=ds.df; M=ds.markers
    res={}
    for im in pd.unique(df.image):
        tr=df[df.image!=im]; te=df[df.image==im]
        norm=Normalizer().fit(tr[M].to_numpy(float),M)
        ztr=norm.transform(tr[M].to_numpy(float),M); zte=norm.transform(te[M].to_numpy(float),M)
        lo,hi=norm.range_bounds(M); utr=(ztr-lo)/(hi-lo); ute=(zte-lo)/(hi-lo)
        ytr=tr.cell_type.to_numpy(); yte=te.cell_type.to_numpy()
        def acc(ftr,fte,std=True):
            c=(make_pipeline(StandardScaler(),LogisticRegression(max_iter=3000)) if std else LogisticRegression(max_iter=3000)).fit(ftr,ytr)
            return (c.predict(fte)==yte).mean()
        feats={
         'full z':(ztr,zte,False),
         'full z std':(ztr,zte,True),
         'u clip[0,1.5] all':(np.clip(utr,0,1.5),np.clip(ute,0,1.5),True),
         'u clip[-0.5,1.5] all':(np.clip(utr,-.5,1.5),np.clip(ute,-.5,1.5),True),
         'u unclipped':(utr,ute,True),
         'thr0.05 pres+val':(np.hstack([utr>.05,np.where(utr>.05,np.clip(utr,0,1.5),0)]),np.hstack([ute>.05,np.where(ute>.05,np.clip(ute,0,1.5),0)]),True),
        }
        for k,(a,b,s) in feats.items(): res.setdefault(k,[]).append(acc(a,b,s))
    print(ds.name); [print(f'  {k:25s} {np.mean(v):.4f}', np.round(v,3)) for k,v in res.items()]

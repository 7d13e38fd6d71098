"""Probe (2026-11-30): a plain PyTorch transformer classifier on the CyCIF strips, no language model.

Every marker is a token (E[marker] + value * V[marker], range scale clipped to [0, 1.5]); 2 layers, hidden
64, no positions; "fixed": panel order, bidirectional, read at an appended CLS token; "sorted_causal":
highest first, causal mask; "*_small": embeddings initialised at sd 0.02 (as Hugging Face models) instead
of 1. 2,000 steps x 32 cells, AdamW 3e-3, cosine; held-out strip = argv[1].

    python benchmarks/probes/plain_transformer.py 3 fixed

Why it is here: it showed that a small transformer reading value-carrying marker tokens CAN beat
logistic regression on the held-out strip, so the gap of our language model was in how it read them.
Printed results: benchmarks/probes/results.md.
"""
import numpy as np, pandas as pd, warnings, sys, torch, time
warnings.simplefilter("ignore")
from pathlib import Path
from spatial2sentence.bench.datasets import load_scimap
from spatial2sentence.normalize import Normalizer
torch.set_num_threads(1)
ds=load_scimap(Path('../shared/data')); df=ds.df; M=ds.markers
imgs=sorted(df.image.unique()); fold=int(sys.argv[1]); mode=sys.argv[2]
tr=df[df.image!=imgs[fold]]; te=df[df.image==imgs[fold]]
norm=Normalizer().fit(tr[M].to_numpy(float),M); lo,hi=norm.range_bounds(M)
f=lambda d: np.clip((norm.transform(d[M].to_numpy(float),M)-lo)/(hi-lo),0,1.5).astype(np.float32)
xtr,xte=f(tr),f(te); labs=sorted(df.cell_type.unique()); li={l:i for i,l in enumerate(labs)}
ytr=np.array([li[l] for l in tr.cell_type]); yte=np.array([li[l] for l in te.cell_type])
m=len(M); d=64; C=len(labs)
class TF(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.E=torch.nn.Embedding(m+1,d); s.V=torch.nn.Embedding(m+1,d)
        if 'small' in mode: torch.nn.init.normal_(s.E.weight,std=0.02); torch.nn.init.normal_(s.V.weight,std=0.02)
        layer=torch.nn.TransformerEncoderLayer(d,4,128,dropout=0.0,batch_first=True,norm_first=True)
        s.enc=torch.nn.TransformerEncoder(layer,2); s.head=torch.nn.Linear(d,C); s.norm=torch.nn.LayerNorm(d)
    def forward(s,x):
        n=x.shape[0]
        if mode.startswith('sorted'):  # tokens ordered by value, highest first, causal-free
            order=torch.argsort(-x,1)
        else:
            order=torch.arange(m).expand(n,m)
        ids=order+1; v=torch.gather(x,1,order)
        h=s.E(ids)+v[...,None]*s.V(ids)
        cls=s.E(torch.zeros(n,1,dtype=torch.long))
        h=torch.cat([h,cls],1)
        if 'causal' in mode:
            mask=torch.nn.Transformer.generate_square_subsequent_mask(m+1)
            out=s.enc(h,mask=mask,is_causal=True)
        else: out=s.enc(h)
        return s.head(s.norm(out[:,-1]))
torch.manual_seed(0); net=TF(); opt=torch.optim.AdamW(net.parameters(),lr=3e-3,weight_decay=0.01)
Xtr=torch.from_numpy(xtr); Ytr=torch.from_numpy(ytr); Xte=torch.from_numpy(xte)
steps=2000; t0=time.time(); g=torch.Generator().manual_seed(0)
for step in range(steps):
    lr=3e-3*min(1,(step+1)/50)*0.5*(1+np.cos(np.pi*step/steps))
    for pg in opt.param_groups: pg['lr']=lr
    b=torch.randint(0,len(Xtr),(32,),generator=g)
    loss=torch.nn.functional.cross_entropy(net(Xtr[b]),Ytr[b]); opt.zero_grad(); loss.backward(); opt.step()
    if (step+1)%500==0:
        with torch.no_grad():
            a=(net(Xte).argmax(1).numpy()==yte).mean(); at=(net(Xtr).argmax(1).numpy()==ytr).mean()
        print(mode, fold, step+1, f'train {at:.3f} test {a:.3f}', round(time.time()-t0), flush=True)

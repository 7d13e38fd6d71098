"""Probe (2026-11-30): a Hugging Face causal LM (Llama, or GPT-2 with option gpt2) reading one cell's
value-carrying marker words, as our c2s prompt does, with options switched one at a time.

Options (comma-separated argv[2]): sorted (highest first) or fixed (panel order); nopos (every position id
0); untied (own output layer); bigE / bigV (embeddings / value embeddings initialised at sd 1);
wideinit (initializer_range 0.1); labelsoftmax (loss over the label words only); relu; gpt2; prefix (the
template and marker words attend to each other both ways, a prefix LM; the answer words stay causal).
Held-out CyCIF strip = argv[1]; 2,000 steps x 32 cells, AdamW 3e-3, cosine.

    python benchmarks/probes/llama_variants.py 3 sorted,nopos

Why it is here: per-word positions cost the held-out strip accuracy (sorted 68.3, nopos 71.5; GPT-2
with learned positions 57.5, without 73.4), which led to ModelSettings.positions="lines".
Printed results: benchmarks/probes/results.md.
"""
import numpy as np, pandas as pd, warnings, sys, torch, time
warnings.simplefilter("ignore")
from pathlib import Path
from spatial2sentence.bench.datasets import load_scimap
from spatial2sentence.normalize import Normalizer
from transformers import LlamaConfig, LlamaForCausalLM
torch.set_num_threads(1)
ds=load_scimap(Path('../shared/data')); df=ds.df; M=ds.markers
imgs=sorted(df.image.unique()); fold=int(sys.argv[1]); opts=sys.argv[2].split(',')
tr=df[df.image!=imgs[fold]]; te=df[df.image==imgs[fold]]
norm=Normalizer().fit(tr[M].to_numpy(float),M); lo,hi=norm.range_bounds(M)
f=lambda d: np.clip((norm.transform(d[M].to_numpy(float),M)-lo)/(hi-lo),0,1.5).astype(np.float32)
xtr,xte=f(tr),f(te); labs=sorted(df.cell_type.unique()); li={l:i for i,l in enumerate(labs)}
ytr=np.array([li[l] for l in tr.cell_type]); yte=np.array([li[l] for l in te.cell_type])
m=len(M); C=len(labs)
# vocab: 0..4 template (BOS cell : ; answer), 5..5+m markers, then labels
NT=5; vocab=NT+m+C
torch.manual_seed(0)
cfg=LlamaConfig(vocab_size=vocab,hidden_size=64,num_hidden_layers=2,num_attention_heads=4,intermediate_size=128,max_position_embeddings=64,tie_word_embeddings='untied' not in opts,initializer_range=0.1 if 'wideinit' in opts else 0.02, hidden_act='relu' if 'relu' in opts else 'silu')
lm=LlamaForCausalLM(cfg)
if 'gpt2' in opts:
    from transformers import GPT2Config, GPT2LMHeadModel
    lm=GPT2LMHeadModel(GPT2Config(vocab_size=vocab,n_embd=64,n_layer=2,n_head=4,n_inner=128,n_positions=64,resid_pdrop=0.0,embd_pdrop=0.0,attn_pdrop=0.0))
V=torch.nn.Embedding(vocab,64); torch.nn.init.normal_(V.weight,std=0.02)
if 'bigV' in opts: torch.nn.init.normal_(V.weight,std=1.0)
if 'bigE' in opts:
    with torch.no_grad(): lm.get_input_embeddings().weight.normal_(0, 1.0)
def batch(x):
    n=x.shape[0]
    order=torch.argsort(-x,dim=1,stable=True) if 'fixed' not in opts else torch.arange(m).expand(n,m)
    ids=torch.cat([torch.tensor([0,1,2]).expand(n,3), order+NT, torch.tensor([3,4]).expand(n,2)],1)
    v=torch.cat([torch.zeros(n,3), torch.gather(x,1,order), torch.zeros(n,2)],1)
    h=lm.get_input_embeddings()(ids)+v[...,None]*V(ids)
    pos=torch.zeros_like(ids) if 'nopos' in opts else torch.arange(ids.shape[1]).expand(n,-1)
    kw={}
    if 'prefix' in opts:  # additive 4D mask: query i sees key j if j <= i or j is in the prefix
        L=ids.shape[1]; P=3+m; i=torch.arange(L)[:,None]; j=torch.arange(L)[None,:]
        ok=(j<=i)|(j<P)
        kw['attention_mask']=torch.zeros(n,1,L,L).masked_fill(~ok,torch.finfo(torch.float32).min)
    logits=lm(inputs_embeds=h,position_ids=pos,**kw).logits[:,-1]
    return logits[:,NT+m:] if 'labelsoftmax' in opts else logits
params=list(lm.parameters())+list(V.parameters())
opt=torch.optim.AdamW(params,lr=3e-3,weight_decay=0.01)
Xtr=torch.from_numpy(xtr); Ytr=torch.from_numpy(ytr); Xte=torch.from_numpy(xte)
steps=2000; t0=time.time(); g=torch.Generator().manual_seed(0)
def pred(X):
    lg=batch(X); return lg[:,NT+m:].argmax(1).numpy() if lg.shape[1]==vocab else lg.argmax(1).numpy()
for step in range(steps):
    lr=3e-3*min(1,(step+1)/50)*0.5*(1+np.cos(np.pi*step/steps))
    for pg in opt.param_groups: pg['lr']=lr
    b=torch.randint(0,len(Xtr),(32,),generator=g)
    lg=batch(Xtr[b]); tgt=Ytr[b]+(0 if lg.shape[1]==C else NT+m)
    loss=torch.nn.functional.cross_entropy(lg,tgt); opt.zero_grad(); loss.backward(); opt.step()
    if (step+1)%500==0:
        with torch.no_grad():
            a=(pred(Xte)==yte).mean(); at=(pred(Xtr)==ytr).mean()
        print(opts, fold, step+1, f'train {at:.3f} test {a:.3f}', round(time.time()-t0), flush=True)

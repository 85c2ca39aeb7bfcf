# An independent NumPy forward pass of all-MiniLM-L6-v2 (mean pooling, L2 norm) over the same
# weights and token ids, giving the reference similarities the Rust test checks against.
# Run: pip install numpy && python3 minilm_numpy.py  (expects the model under target/test-models).
import json, struct, numpy as np, math
p='/work/main/target/test-models/minilm/model.safetensors'
b=open(p,'rb').read(); n=struct.unpack('<Q',b[:8])[0]; h=json.loads(b[8:8+n]); base=8+n
W={}
for k,v in h.items():
    if k=='__metadata__': continue
    s,e=v['data_offsets']; W[k]=np.frombuffer(b[base+s:base+e],dtype={'F32':np.float32,'I64':np.int64}[v['dtype']]).reshape(v['shape'])
def ln(x,g,bb,eps=1e-12):
    m=x.mean(-1,keepdims=True); v=((x-m)**2).mean(-1,keepdims=True); return (x-m)/np.sqrt(v+eps)*g+bb
def gelu(x): 
    from math import erf
    return 0.5*x*(1+np.vectorize(erf)(x/math.sqrt(2)))
def emb(ids):
    n=len(ids)
    x=W['embeddings.word_embeddings.weight'][ids]+W['embeddings.position_embeddings.weight'][:n]+W['embeddings.token_type_embeddings.weight'][0]
    x=ln(x,W['embeddings.LayerNorm.weight'],W['embeddings.LayerNorm.bias'])
    for l in range(6):
        P=f'encoder.layer.{l}.'
        q=x@W[P+'attention.self.query.weight'].T+W[P+'attention.self.query.bias']
        k=x@W[P+'attention.self.key.weight'].T+W[P+'attention.self.key.bias']
        v=x@W[P+'attention.self.value.weight'].T+W[P+'attention.self.value.bias']
        H=12;d=32
        q=q.reshape(n,H,d).transpose(1,0,2);k=k.reshape(n,H,d).transpose(1,0,2);v=v.reshape(n,H,d).transpose(1,0,2)
        a=q@k.transpose(0,2,1)/math.sqrt(d); a=np.exp(a-a.max(-1,keepdims=True)); a/=a.sum(-1,keepdims=True)
        c=(a@v).transpose(1,0,2).reshape(n,H*d)
        o=c@W[P+'attention.output.dense.weight'].T+W[P+'attention.output.dense.bias']
        x=ln(o+x,W[P+'attention.output.LayerNorm.weight'],W[P+'attention.output.LayerNorm.bias'])
        i=gelu(x@W[P+'intermediate.dense.weight'].T+W[P+'intermediate.dense.bias'])
        o=i@W[P+'output.dense.weight'].T+W[P+'output.dense.bias']
        x=ln(o+x,W[P+'output.LayerNorm.weight'],W[P+'output.LayerNorm.bias'])
    m=x.mean(0); return m/np.linalg.norm(m)
E={s:emb(i) for s,i in {"a":[101, 4937, 2938, 2006, 1996, 13523, 102],"b":[101, 18401, 2006, 1996, 20452, 102],"c":[101, 4937, 102],"d":[101, 4518, 3006, 102]}.items()}
print("cat/kitten", float(E['a']@E['b']), "cat/stock", float(E['c']@E['d']))

use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn time(name: &str, f: impl Fn() -> Tensor) {
    let _ = f();
    let t = Instant::now();
    for _ in 0..5 { let _ = f(); }
    println!("{name:30} {:8.2} ms", t.elapsed().as_secs_f64() * 1000.0 / 5.0);
}

fn main() {
    let kind = if std::env::args().any(|a| a == "bf16") { Kind::BFloat16 } else { Kind::Float };
    let o = (kind, Device::Cpu);
    let x = Tensor::randn([8, 256, 576], o);
    let w = Tensor::ones([576], o);
    let wqkv = Tensor::randn([960, 576], o);
    let wo = Tensor::randn([576, 576], o);
    let win = Tensor::randn([3072, 576], o);
    let wout = Tensor::randn([576, 1536], o);
    let h = Tensor::randn([8, 256, 1536], o);
    time("rms_norm", || x.rms_norm([576], Some(&w), 1e-5));
    time("manual rms", || { let v = x.pow_tensor_scalar(2).mean_dim(-1, true, kind); &x * (v + 1e-5).rsqrt() * &w });
    time("qkv linear", || x.linear::<Tensor>(&wqkv, None));
    time("o linear", || x.linear::<Tensor>(&wo, None));
    time("mlp in linear", || x.linear::<Tensor>(&win, None));
    time("mlp out linear", || h.linear::<Tensor>(&wout, None));
    let q = Tensor::randn([8, 256, 9, 64], o).transpose(1, 2);
    let k = Tensor::randn([8, 256, 3, 64], o).transpose(1, 2);
    let kr = k.unsqueeze(2).expand([8, 3, 3, 256, 64], false).reshape([8, 9, 256, 64]);
    time("sdpa causal noncontig q", || Tensor::scaled_dot_product_attention(&q, &kr, &kr, None::<Tensor>, 0.0, true, None, false));
    let qc = q.contiguous();
    time("sdpa causal contig", || Tensor::scaled_dot_product_attention(&qc, &kr, &kr, None::<Tensor>, 0.0, true, None, false));
    time("sdpa gqa", || Tensor::scaled_dot_product_attention(&q, &k, &k, None::<Tensor>, 0.0, true, None, true));
    let mask = Tensor::ones([256, 256], (Kind::Bool, Device::Cpu)).tril(0);
    time("explicit attn", || { let s = q.matmul(&kr.transpose(-1, -2)) * 0.125; let p = s.masked_fill(&mask.logical_not(), f64::NEG_INFINITY).softmax(-1, kind); p.matmul(&kr) });
    time("sdpa explicit mask", || Tensor::scaled_dot_product_attention(&q, &kr, &kr, Some(&mask), 0.0, false, None, false));
    time("rms f32 upcast", || { let xf = x.to_kind(Kind::Float); let v = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float); (xf * (v + 1e-5).rsqrt()).to_kind(kind) * &w });
    let (qc2, kc2) = (q.contiguous(), kr.contiguous());
    time("sdpa all contiguous", || Tensor::scaled_dot_product_attention(&qc2, &kc2, &kc2, None::<Tensor>, 0.0, true, None, false));
    let addmask = Tensor::zeros([256, 256], o).masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    time("explicit add-mask softmax in kind", || { let s = qc2.matmul(&kc2.transpose(-1, -2)) * 0.125 + &addmask; s.softmax(-1, kind).matmul(&kc2) });
    let sc = qc2.matmul(&kc2.transpose(-1, -2));
    time("  QK^T bmm", || qc2.matmul(&kc2.transpose(-1, -2)));
    time("  scale+mask add", || &sc * 0.125 + &addmask);
    time("  softmax in kind", || sc.softmax(-1, kind));
    time("  softmax f32 out", || sc.softmax(-1, Kind::Float));
    let pr = sc.softmax(-1, kind);
    time("  PV bmm", || pr.matmul(&kc2));
    time("silu*up", || { let g = h.silu(); g * &h });
    let cos = Tensor::randn([1, 1, 256, 64], o);
    time("rotary", || { let x1 = q.narrow(3, 0, 32); let x2 = q.narrow(3, 32, 32); let r = Tensor::cat(&[x2.neg(), x1], 3); &q * &cos + r * &cos });
    let emb = Tensor::randn([49152, 576], o);
    let y = Tensor::randn([8, 256, 576], o);
    time("unembed", || y.linear::<Tensor>(&emb, None));
    let yf = y.view([2048, 576]);
    for chunk in [128i64, 256, 512] {
        time(&format!("unembed chunk {chunk}"), || {
            let out = Tensor::empty([2048, 49152], o);
            for i in 0..(2048 / chunk) {
                let mut dst = out.narrow(0, i * chunk, chunk);
                let _ = yf.narrow(0, i * chunk, chunk).matmul_out(&mut dst, &emb.tr());
            }
            out
        });
    }
    time("unembed mm", || yf.mm(&emb.tr()));
}

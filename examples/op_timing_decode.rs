use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn time(name: &str, f: impl Fn() -> Tensor) {
    for _ in 0..50 { let _ = f(); }
    let t = Instant::now();
    for _ in 0..200 { let _ = f(); }
    println!("{name:30} {:8.2} us", t.elapsed().as_secs_f64() * 1e6 / 200.0);
}

fn main() {
    let kind = if std::env::args().any(|a| a == "bf16") { Kind::BFloat16 } else { Kind::Float };
    let o = (kind, Device::Cpu);
    let _g = tch::no_grad_guard();
    if std::env::args().any(|a| a == "t1") { tch::set_num_threads(1); }
    println!("threads {}", tch::get_num_threads());
    let x = Tensor::randn([1, 1, 576], o);
    let w = Tensor::ones([576], o);
    let q = Tensor::randn([1, 9, 1, 64], o);
    let kc = Tensor::randn([1, 3, 200, 64], o);
    let k = kc.narrow(2, 0, 80);
    time("sdpa gqa decode", || Tensor::scaled_dot_product_attention(&q, &k, &k, None::<Tensor>, 0.0, false, None, true));
    time("manual gqa decode", || {
        let qg = q.view([1, 3, 3, 64]);
        let s = qg.matmul(&k.transpose(-1, -2)) * 0.125;
        let p = s.softmax(-1, Kind::Float).to_kind(kind);
        p.matmul(&k).view([1, 9, 1, 64])
    });
    time("rms manual", || { let xf = x.to_kind(Kind::Float); let v = xf.square().mean_dim(-1, true, Kind::Float); (xf * (v + 1e-5).rsqrt()).to_kind(kind) * &w });
    time("rms fused", || x.rms_norm([576], Some(&w), 1e-5));
    let qk = Tensor::randn([1, 12, 1, 64], o);
    let cos = Tensor::randn([1, 1, 1, 64], o);
    time("rotary", || { let x1 = qk.narrow(3, 0, 32); let x2 = qk.narrow(3, 32, 32); let r = Tensor::cat(&[x2.neg(), x1], 3); &qk * &cos + r * &cos });
    time("add", || &x + &x);
    time("narrow+copy_", || { kc.narrow(2, 80, 1).copy_(&qk.narrow(1, 0, 3)); x.shallow_clone() });
    let wq = Tensor::randn([960, 576], o);
    time("qkv gemv", || x.linear::<Tensor>(&wq, None));
    let ws: Vec<Tensor> = (0..30).map(|_| Tensor::randn([3072, 576], o)).collect();
    for m in [1i64, 2, 4, 8] {
        let xm = Tensor::randn([m, 576], o);
        time(&format!("30x mlp_in M={m}"), || { for w in &ws { let _ = xm.linear::<Tensor>(w, None); } x.shallow_clone() });
        time(&format!("30x mlp_in M={m} as matmul wT"), || { for w in &ws { let _ = xm.matmul(&w.tr()); } x.shallow_clone() });
        let wts: Vec<Tensor> = ws.iter().map(|w| w.tr().contiguous()).collect();
        time(&format!("30x mlp_in M={m} x@Wt contiguous"), || { for w in &wts { let _ = xm.mm(w); } x.shallow_clone() });
        let x3 = xm.unsqueeze(0);
        time(&format!("30x mlp_in M={m} bmm"), || { for w in &ws { let _ = x3.matmul(&w.tr().unsqueeze(0)); } x.shallow_clone() });
        time(&format!("30x mlp_in M={m} as gemv-loop"), || { for w in &ws { for r in 0..m { let _ = w.mv(&xm.get(r)); } } x.shallow_clone() });
    }
    let wi = Tensor::randn([3072, 576], o);
    time("mlp in gemv", || x.linear::<Tensor>(&wi, None));
}

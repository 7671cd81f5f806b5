use std::cell::RefCell;
use std::time::Instant;
use saescope::hooks::{BlockSite, FnIntervention, HookPoint, Hooks};
use saescope::model::{load_model, ForwardInput, LogitsFor, StopAt};
use tch::{Device, Kind, Tensor};

fn main() {
    saescope::alloc_tuning::keep_freed_memory_mapped();
    let kind = if std::env::args().any(|a| a == "bf16") { Kind::BFloat16 } else { Kind::Float };
    let m = load_model("smollm2-135m", Device::Cpu, kind).unwrap();
    let model = &m.model;
    let last = RefCell::new(Instant::now());
    let acc = RefCell::new(std::collections::BTreeMap::<String, f64>::new());
    let hooks: Vec<HookPoint> = HookPoint::all(30).into_iter().filter(|h| !matches!(h, HookPoint::Block(_, BlockSite::AttnPattern))).collect();
    let mut timer = FnIntervention::new(hooks.clone(), |h, _x, _| {
        let now = Instant::now();
        let dt = now.duration_since(*last.borrow()).as_secs_f64() * 1000.0;
        *last.borrow_mut() = now;
        let key = match h { HookPoint::Block(_, s) => format!("{s:?}"), other => other.to_string() };
        *acc.borrow_mut().entry(key).or_default() += dt;
        Ok(None)
    });
    let b: i64 = if std::env::args().any(|a| a == "b8") { 8 } else { 1 };
    let mut cache = model.new_cache(b, 200);
    let prompt = Tensor::randint(49152, [b, 16], (Kind::Int64, Device::Cpu));
    tch::no_grad(|| model.forward(&ForwardInput::tokens(&prompt), Some(&mut cache), &mut Hooks::new(), StopAt::Logits(LogitsFor::Last))).unwrap();
    let tok = Tensor::from_slice(&vec![5i64; b as usize]).view([b, 1]);
    let steps = 50;
    let mut plain = 0.0;
    for i in 0..steps {
        let t0 = Instant::now();
        let out = tch::no_grad(|| model.forward(&ForwardInput::tokens(&tok), Some(&mut cache), &mut Hooks::new(), StopAt::Logits(LogitsFor::Last))).unwrap().unwrap();
        let _ = out.argmax(-1, false).sum(Kind::Int64).int64_value(&[]);
        if i > 0 { plain += t0.elapsed().as_secs_f64() * 1000.0; }
    }
    println!("plain step {:.2} ms", plain / (steps - 1) as f64);
    acc.borrow_mut().clear();
    let t0 = Instant::now();
    for _ in 0..steps {
        *last.borrow_mut() = Instant::now();
        let out = tch::no_grad(|| model.forward(&ForwardInput::tokens(&tok), Some(&mut cache), &mut Hooks::new().with(&mut timer), StopAt::Logits(LogitsFor::Last))).unwrap().unwrap();
        let _ = out.argmax(-1, false).sum(Kind::Int64).int64_value(&[]);
    }
    println!("timed step {:.2} ms", t0.elapsed().as_secs_f64() * 1000.0 / steps as f64);
    for (k, v) in acc.borrow().iter() { println!("{k:25} {:8.3} ms/step", v / steps as f64); }
}

use std::cell::RefCell;
use std::time::Instant;
use saescope::hooks::{FnIntervention, HookPoint, Hooks};
use saescope::model::{load_model, ForwardInput, LogitsFor, StopAt};
use tch::{Device, Kind, Tensor};

fn main() {
    saescope::alloc_tuning::keep_freed_memory_mapped();
    let kind = if std::env::args().any(|a| a == "bf16") { Kind::BFloat16 } else { Kind::Float };
    let m = load_model("smollm2-135m", Device::Cpu, kind).unwrap();
    let tokens = Tensor::randint(49152, [8, 256], (Kind::Int64, Device::Cpu));
    let last = RefCell::new(Instant::now());
    let acc = RefCell::new(std::collections::BTreeMap::<String, f64>::new());
    let hooks: Vec<HookPoint> = HookPoint::all(30).into_iter().filter(|h| !matches!(h, HookPoint::Block(_, saescope::hooks::BlockSite::AttnPattern))).collect();
    for rep in 0..2 {
        let mut timer = FnIntervention::new(hooks.clone(), |h, _x, _| {
            let now = Instant::now();
            let dt = now.duration_since(*last.borrow()).as_secs_f64() * 1000.0;
            *last.borrow_mut() = now;
            if rep == 1 {
                let key = match h { HookPoint::Block(_, s) => format!("{s:?}"), other => other.to_string() };
                *acc.borrow_mut().entry(key).or_default() += dt;
            }
            Ok(None)
        });
        *last.borrow_mut() = Instant::now();
        let t0 = Instant::now();
        tch::no_grad(|| m.model.forward(&ForwardInput::tokens(&tokens), None, &mut Hooks::new().with(&mut timer), StopAt::Logits(LogitsFor::All))).unwrap();
        println!("total {:.1} ms", t0.elapsed().as_secs_f64() * 1000.0);
    }
    for (k, v) in acc.borrow().iter() { println!("{k:25} {v:8.1} ms"); }
}

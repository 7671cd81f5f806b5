use std::time::Instant;
use saescope::bench::{GemvProbe, generate_throughput, RuntimeBenchConfig};
use saescope::model::load_model;
use tch::{Device, Kind};

fn main() {
    saescope::alloc_tuning::keep_freed_memory_mapped();
    let kind = if std::env::args().any(|a| a == "bf16") { Kind::BFloat16 } else { Kind::Float };
    let m = load_model("smollm2-135m", Device::Cpu, kind).unwrap();
    let cfg = RuntimeBenchConfig { repeats: 5, ..Default::default() };
    let bytes = m.model.config().streamed_parameters() as f64 * if kind == Kind::Float { 4.0 } else { 2.0 };
    let t = Instant::now();
    let g = GemvProbe::new(kind, Device::Cpu, 576, bytes).gbps(3).unwrap();
    println!("gemv {g:.2} GB/s -> limit {:.2} tok/s ({:.1}s)", g * 1e9 / bytes, t.elapsed().as_secs_f64());
    let b1 = generate_throughput(&m.model, &cfg, 1).unwrap();
    println!("b1 {b1:.2} tok/s = {:.1}% of limit", 100.0 * b1 / (g * 1e9 / bytes));
    if std::env::args().any(|a| a == "b8") {
        println!("b8 {:.2}", generate_throughput(&m.model, &cfg, 8).unwrap());
    }
}

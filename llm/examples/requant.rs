//! Rewrites a GGUF with Q8_0 matrices: `cargo run --release -p coda-llm --example requant -- IN.gguf OUT.gguf`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (src, dst) = match (args.next(), args.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Err("usage: requant IN.gguf OUT.gguf".into()),
    };
    let t = std::time::Instant::now();
    let report = coda_llm::requant::requantize(
        src.as_ref(),
        dst.as_ref(),
        coda_llm::requant::Requant::AllQ8_0,
        |_, _| {},
    )?;
    eprintln!("{report:?} in {:.2} s", t.elapsed().as_secs_f64());
    Ok(())
}

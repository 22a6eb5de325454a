//! `coda devices`: the sound devices (inputs and outputs, defaults marked, supported
//! configs).

/// `coda devices`.
pub fn run(json: bool) -> anyhow::Result<()> {
    let list = match coda_actors::audio::list_devices() {
        Ok(l) => l,
        Err(e) => anyhow::bail!("cannot list sound devices: {e}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!("audio host: {}", list.host);
    for (title, devs) in [("inputs", &list.inputs), ("outputs", &list.outputs)] {
        println!("{title}:");
        if devs.is_empty() {
            println!("  (none)");
        }
        for d in devs.iter() {
            let mark = if d.is_default { "*" } else { " " };
            let name = if d.name != d.id {
                format!("{}  ({})", d.id, d.name)
            } else {
                d.id.clone()
            };
            match &d.default_config {
                Some(c) => println!(
                    "  {mark} {name}: default {} ch, {} Hz, {}",
                    c.channels, c.min_rate, c.format
                ),
                None => println!("  {mark} {name}: not usable now"),
            }
            // One line per sample format: channel and rate ranges (plugins such as
            // ALSA's `null` list every channel count separately).
            let mut formats: Vec<(String, u16, u16, u32, u32)> = Vec::new();
            for c in &d.configs {
                match formats.iter_mut().find(|f| f.0 == c.format) {
                    Some(f) => {
                        f.1 = f.1.min(c.channels);
                        f.2 = f.2.max(c.channels);
                        f.3 = f.3.min(c.min_rate);
                        f.4 = f.4.max(c.max_rate);
                    }
                    None => formats.push((
                        c.format.clone(),
                        c.channels,
                        c.channels,
                        c.min_rate,
                        c.max_rate,
                    )),
                }
            }
            for (format, ch_lo, ch_hi, lo, hi) in formats {
                let ch = if ch_lo == ch_hi {
                    format!("{ch_lo}")
                } else {
                    format!("{ch_lo}-{ch_hi}")
                };
                println!("        {format}: {ch} ch, {lo}-{hi} Hz");
            }
            if let Some(e) = &d.error {
                println!("        (configs unavailable: {e})");
            }
        }
    }
    let usable =
        |v: &Vec<coda_actors::audio::DeviceInfo>| v.iter().any(|d| d.default_config.is_some());
    if !usable(&list.inputs) && !usable(&list.outputs) {
        println!(
            "no usable sound device: this machine has no sound card (or ALSA cannot reach it). \
Speech is still synthesised (coda say -o FILE.wav) and clients can send audio frames."
        );
    }
    println!("(* = default; put an id in audio.input_device / audio.output_device)");
    Ok(())
}

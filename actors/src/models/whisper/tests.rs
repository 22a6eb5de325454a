use super::*;

/// Writes a CTranslate2 model.bin (version 6) with these variables.
fn write_ct2(path: &Path, vars: &[(String, Vec<u32>, u8, Vec<u8>)]) {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, t: &str| {
        b.extend_from_slice(&((t.len() + 1) as u16).to_le_bytes());
        b.extend_from_slice(t.as_bytes());
        b.push(0);
    };
    b.extend_from_slice(&6u32.to_le_bytes());
    s(&mut b, "WhisperSpec");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(vars.len() as u32).to_le_bytes());
    for (name, dims, dtype, data) in vars {
        s(&mut b, name);
        b.push(dims.len() as u8);
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.push(*dtype);
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
    }
    b.extend_from_slice(&1u32.to_le_bytes());
    s(&mut b, "decoder/projection/weight");
    s(&mut b, "decoder/embeddings/weight");
    std::fs::write(path, b).expect("write model.bin");
}

fn f16s(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

/// A directory holding [`tiny_model`], and where its conversion goes.
fn tiny_model_dir(int8: bool) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    tiny_model(dir.path(), int8);
    let out = dir.path().join("out.bin");
    (dir, out)
}

/// A tiny model: width 8, one layer each side, 6 tokens, 2 mels. Every value is its
/// element index plus a per-tensor offset, so the split can be checked exactly.
/// `int8` stores the 2-D weights quantised with a per-row scale.
fn tiny_model(dir: &Path, int8: bool) {
    tiny_model_of_width(dir, int8, 8);
}

/// [`tiny_model`] `d` wide (32 holds Q8_0 blocks).
fn tiny_model_of_width(dir: &Path, int8: bool, d: u32) {
    let mut vars: Vec<(String, Vec<u32>, u8, Vec<u8>)> = Vec::new();
    let mut next = 0f32;
    let mut tensor =
        |name: &str, dims: Vec<u32>, vars: &mut Vec<(String, Vec<u32>, u8, Vec<u8>)>| {
            let n: u32 = dims.iter().product();
            let vals: Vec<f32> = (0..n).map(|i| (next + i as f32) / 64.0).collect();
            next += 1000.0;
            if int8 && dims.len() == 2 && name.ends_with("weight") && !name.contains("position") {
                let rows = dims[0] as usize;
                let cols = (n as usize) / rows;
                let mut q = Vec::new();
                let mut scales = Vec::new();
                for r in 0..rows {
                    let row = &vals[r * cols..(r + 1) * cols];
                    let max = row.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                    let scale = 127.0 / max;
                    scales.extend_from_slice(&scale.to_le_bytes());
                    q.extend(row.iter().map(|v| (v * scale).round() as i8 as u8));
                }
                vars.push((name.to_string(), dims.clone(), 1, q));
                vars.push((format!("{name}_scale"), vec![dims[0]], 0, scales));
            } else {
                vars.push((name.to_string(), dims, 4, f16s(&vals)));
            }
        };
    for side in ["encoder", "decoder"] {
        let l = format!("{side}/layer_0");
        tensor(
            &format!("{l}/self_attention/linear_0/weight"),
            vec![3 * d, d],
            &mut vars,
        );
        tensor(
            &format!("{l}/self_attention/linear_0/bias"),
            vec![3 * d],
            &mut vars,
        );
        tensor(
            &format!("{l}/self_attention/linear_1/weight"),
            vec![d, d],
            &mut vars,
        );
        tensor(
            &format!("{l}/self_attention/linear_1/bias"),
            vec![d],
            &mut vars,
        );
        for n in ["self_attention/layer_norm", "ffn/layer_norm"] {
            tensor(&format!("{l}/{n}/gamma"), vec![d], &mut vars);
            tensor(&format!("{l}/{n}/beta"), vec![d], &mut vars);
        }
        tensor(
            &format!("{l}/ffn/linear_0/weight"),
            vec![4 * d, d],
            &mut vars,
        );
        tensor(&format!("{l}/ffn/linear_0/bias"), vec![4 * d], &mut vars);
        tensor(
            &format!("{l}/ffn/linear_1/weight"),
            vec![d, 4 * d],
            &mut vars,
        );
        tensor(&format!("{l}/ffn/linear_1/bias"), vec![d], &mut vars);
        tensor(&format!("{side}/layer_norm/gamma"), vec![d], &mut vars);
        tensor(&format!("{side}/layer_norm/beta"), vec![d], &mut vars);
        vars.push((
            format!("{side}/num_heads"),
            vec![],
            2,
            2i16.to_le_bytes().to_vec(),
        ));
    }
    let l = "decoder/layer_0/attention";
    tensor(&format!("{l}/linear_0/weight"), vec![d, d], &mut vars);
    tensor(&format!("{l}/linear_0/bias"), vec![d], &mut vars);
    tensor(&format!("{l}/linear_1/weight"), vec![2 * d, d], &mut vars);
    tensor(&format!("{l}/linear_1/bias"), vec![2 * d], &mut vars);
    tensor(&format!("{l}/linear_2/weight"), vec![d, d], &mut vars);
    tensor(&format!("{l}/linear_2/bias"), vec![d], &mut vars);
    tensor(&format!("{l}/layer_norm/gamma"), vec![d], &mut vars);
    tensor(&format!("{l}/layer_norm/beta"), vec![d], &mut vars);
    tensor("encoder/conv1/weight", vec![d, 2, 3], &mut vars);
    tensor("encoder/conv1/bias", vec![d], &mut vars);
    tensor("encoder/conv2/weight", vec![d, d, 3], &mut vars);
    tensor("encoder/conv2/bias", vec![d], &mut vars);
    tensor(
        "encoder/position_encodings/encodings",
        vec![10, d],
        &mut vars,
    );
    tensor(
        "decoder/position_encodings/encodings",
        vec![5, d],
        &mut vars,
    );
    tensor("decoder/embeddings/weight", vec![6, d], &mut vars);
    write_ct2(&dir.join("model.bin"), &vars);
    std::fs::write(
        dir.join("vocabulary.txt"),
        "!\nhello\nĠworld\nĊ\n<|endoftext|>\n<|startoftranscript|>\n",
    )
    .expect("vocab");
}

/// Test-side reader of a ggml whisper file's tensors: name → (ggml dims, type, values).
fn read_tensors(path: &Path) -> HashMap<String, (Vec<i32>, i32, Vec<f32>)> {
    let b = std::fs::read(path).expect("read");
    let i32_at = |o: usize| i32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let n_mels = i32_at(48) as usize;
    let n_fft = i32_at(52) as usize;
    let mut o = 56 + n_mels * n_fft * 4;
    let words = i32_at(o) as usize;
    o += 4;
    for _ in 0..words {
        o += 4 + i32_at(o) as usize;
    }
    let mut out = HashMap::new();
    while o < b.len() {
        let (nd, nl, t) = (i32_at(o) as usize, i32_at(o + 4) as usize, i32_at(o + 8));
        o += 12;
        let dims: Vec<i32> = (0..nd).map(|i| i32_at(o + 4 * i)).collect();
        o += 4 * nd;
        let name = String::from_utf8(b[o..o + nl].to_vec()).expect("name");
        o += nl;
        let n: usize = dims.iter().map(|d| *d as usize).product();
        let f16_at = |o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
        let vals: Vec<f32> = match t {
            0 => (0..n)
                .map(|i| f32::from_le_bytes(b[o + 4 * i..o + 4 * i + 4].try_into().expect("4")))
                .collect(),
            8 => (0..n)
                .map(|i| {
                    let block = o + i / 32 * 34;
                    f16_at(block) * f32::from(b[block + 2 + i % 32] as i8)
                })
                .collect(),
            _ => (0..n).map(|i| f16_at(o + 2 * i)).collect(),
        };
        o += match t {
            0 => n * 4,
            8 => n / 32 * 34,
            _ => n * 2,
        };
        out.insert(name, (dims, t, vals));
    }
    out
}

#[test]
fn mel_filters_match_openai_whisper() {
    let fixture = include_bytes!("../testdata/openai_mel_80.f32");
    let want: Vec<f32> = fixture
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let got = mel_filters(80);
    assert_eq!(got.len(), want.len());
    assert_eq!(got.len(), 80 * 201);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-6, "largest difference {worst}");
    // 128 bands (large-v3): every row is a triangle with some weight.
    let m128 = mel_filters(128);
    assert!(m128.chunks(201).all(|row| row.iter().any(|v| *v > 0.0)));
}

#[test]
fn byte_level_characters_decode_to_bytes() {
    let d = gpt2_byte_decoder();
    assert_eq!(d.len(), 256);
    assert_eq!(d[&'Ġ'], b' ');
    assert_eq!(d[&'Ċ'], b'\n');
    assert_eq!(d[&'!'], b'!');
    assert_eq!(token_bytes("Ġworld", &d).as_deref(), Some(&b" world"[..]));
    assert_eq!(token_bytes("é", &d), Some(vec![0xE9]));
    assert_eq!(token_bytes("€", &d), None);
}

#[test]
fn converts_splits_and_checks_a_model() {
    let (dir, out) = tiny_model_dir(false);
    let mut calls = 0;
    let report = convert_ct2(dir.path(), &out, WhisperWeights::F16, |done, total| {
        calls += 1;
        assert!(done <= total);
    })
    .expect("converts");
    assert!(calls > 0);
    assert_eq!(report.vocab, 4);
    assert_eq!(report.hparams.n_vocab, 6);
    assert_eq!(report.hparams.n_audio_state, 8);
    assert_eq!(report.hparams.n_audio_head, 2);
    assert_eq!(report.hparams.n_text_ctx, 5);
    assert_eq!(report.hparams.n_mels, 2);
    let (hp, n) = check_ggml(&out).expect("valid ggml");
    assert_eq!(hp, report.hparams);
    assert_eq!(n, 7 + 15 + 4 + 24);

    let t = read_tensors(&out);
    // Fused q,k,v rows split: key = rows 8..16 of linear_0, weight only.
    let q = &t["encoder.blocks.0.attn.query.weight"];
    let k = &t["encoder.blocks.0.attn.key.weight"];
    let v = &t["encoder.blocks.0.attn.value.bias"];
    assert_eq!(q.0, vec![8, 8]);
    assert_eq!(q.1, 1, "2-D weights are f16");
    assert_eq!(k.2[0], 64.0 / 64.0, "key starts at row 8 (element 64)");
    assert!(!t.contains_key("encoder.blocks.0.attn.key.bias"));
    assert_eq!(v.1, 0, "biases are f32");
    assert_eq!(v.2.len(), 8);
    let bias_base = v.2[0] * 64.0 % 1000.0;
    assert_eq!(bias_base, 16.0, "value bias is elements 16..24");
    let ck = &t["decoder.blocks.0.cross_attn.key.weight"];
    let cv = &t["decoder.blocks.0.cross_attn.value.weight"];
    assert_eq!(ck.0, vec![8, 8]);
    assert_eq!((cv.2[0] * 64.0) % 1000.0, 64.0);
    // Conv bias [n, 1] (ggml order [1, n]), conv weight reversed, positions f32.
    assert_eq!(t["encoder.conv1.bias"].0, vec![1, 8]);
    assert_eq!(t["encoder.conv1.weight"].0, vec![3, 2, 8]);
    assert_eq!(t["encoder.conv1.weight"].1, 1);
    assert_eq!(t["encoder.positional_embedding"].1, 0);
    assert_eq!(t["decoder.positional_embedding"].1, 0);
    assert_eq!(t["decoder.token_embedding.weight"].1, 1);
    assert_eq!(t["decoder.ln.weight"].1, 0);
    assert!(is_ggml(&out));
    assert!(!out.with_extension("partial").exists());
}

#[test]
fn int8_models_are_dequantised() {
    let (dir, out) = tiny_model_dir(true);
    let report = convert_ct2(dir.path(), &out, WhisperWeights::F16, |_, _| {}).expect("converts");
    assert_eq!(report.source_dtype, "int8");
    let t = read_tensors(&out);
    let k = &t["encoder.blocks.0.attn.key.weight"];
    // Original row 8 of linear_0 is (64..72)/64; int8 keeps about 2 digits.
    for (i, got) in k.2[..8].iter().enumerate() {
        let want = (64 + i) as f32 / 64.0;
        assert!((got - want).abs() < want / 100.0, "{got} vs {want}");
    }
}

#[test]
fn truncated_or_foreign_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    tiny_model(dir.path(), false);
    let model = std::fs::read(dir.path().join("model.bin")).expect("read");
    let out = dir.path().join("out.bin");
    for cut in [
        0,
        3,
        10,
        40,
        model.len() / 3,
        model.len() / 2,
        model.len() - 5,
    ] {
        std::fs::write(dir.path().join("model.bin"), &model[..cut]).expect("write");
        let err =
            convert_ct2(dir.path(), &out, WhisperWeights::F16, |_, _| {}).expect_err("truncated");
        assert!(
            matches!(err, WhisperModelError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
        assert!(!out.exists() && !out.with_extension("partial").exists());
    }
    std::fs::write(dir.path().join("model.bin"), &model).expect("write");
    tiny_model(dir.path(), false);
    convert_ct2(dir.path(), &out, WhisperWeights::F16, |_, _| {}).expect("converts");
    let ggml = std::fs::read(&out).expect("read");
    for cut in [2, 30, ggml.len() / 2, ggml.len() - 1] {
        let bad = dir.path().join("bad.bin");
        std::fs::write(&bad, &ggml[..cut]).expect("write");
        let err = check_ggml(&bad).expect_err("truncated ggml");
        assert!(err.to_string().contains("truncated"), "cut at {cut}: {err}");
    }
    let gguf = dir.path().join("x.gguf");
    std::fs::write(&gguf, b"GGUF\x03\0\0\0rest").expect("write");
    assert!(check_ggml(&gguf)
        .expect_err("foreign")
        .to_string()
        .contains("not a ggml whisper model"));
    std::fs::remove_file(dir.path().join("vocabulary.txt")).expect("rm");
    assert!(
        convert_ct2(dir.path(), &out, WhisperWeights::F16, |_, _| {})
            .expect_err("no vocab")
            .to_string()
            .contains("vocabulary")
    );
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(
        convert_ct2(empty.path(), &out, WhisperWeights::F16, |_, _| {})
            .expect_err("empty dir")
            .to_string()
            .contains("model.bin")
    );
}

#[test]
fn q8_0_blocks_follow_ggml() {
    // One block: max |x| 127 gives scale 1; halves round away from zero.
    let mut x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
    x[0] = -127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    let b = q8_0_blocks(&x);
    assert_eq!(b.len(), 34);
    assert_eq!(half::f16::from_le_bytes([b[0], b[1]]).to_f32(), 1.0);
    let q: Vec<i8> = b[2..].iter().map(|v| *v as i8).collect();
    assert_eq!(&q[..4], &[-127, 3, -3, -13]);
    assert_eq!(q[31], 15);
    // A zero block has scale 0 and zeros; a second block is scaled on its own.
    let mut two = vec![0f32; 32];
    two.extend((0..32).map(|i| i as f32 / 100.0));
    let b = q8_0_blocks(&two);
    assert_eq!(b.len(), 68);
    assert!(b[..34].iter().all(|v| *v == 0));
    let d = half::f16::from_le_bytes([b[34], b[35]]).to_f32();
    assert!((d - 0.31 / 127.0).abs() < 1e-5, "{d}");
    for (i, q) in b[36..].iter().enumerate() {
        let back = d * f32::from(*q as i8);
        // half a step, and the scale's own rounding to f16 (2^-11 of the value)
        let x = i as f32 / 100.0;
        assert!((back - x).abs() <= d / 2.0 + x * 1e-3, "{i}: {back}");
    }
}

#[test]
fn converts_with_q8_0_matrices() {
    let dir = tempfile::tempdir().expect("tempdir");
    tiny_model_of_width(dir.path(), false, 32);
    let (f16, q8) = (dir.path().join("f16.bin"), dir.path().join("q8.bin"));
    convert_ct2(dir.path(), &f16, WhisperWeights::F16, |_, _| {}).expect("f16");
    let report = convert_ct2(dir.path(), &q8, WhisperWeights::Q8_0, |_, _| {}).expect("q8_0");
    assert_eq!(
        report.hparams.ftype, 2007,
        "q8_0 with ggml's quantisation version"
    );
    let (hp, n) = check_ggml(&q8).expect("valid ggml");
    assert_eq!(hp.weights_name(), "q8_0");
    assert_eq!(n, report.tensors);
    assert!(
        std::fs::metadata(&q8).expect("q8").len() < std::fs::metadata(&f16).expect("f16").len()
    );
    let (a, b) = (read_tensors(&f16), read_tensors(&q8));
    assert_eq!(a.len(), b.len());
    for (name, (dims, t, vals)) in &b {
        let (f16_dims, f16_t, f16_vals) = &a[name];
        assert_eq!(dims, f16_dims, "{name}");
        match (f16_t, dims.len()) {
            // matrices: Q8_0, each value within half a step of its block's scale
            (1, 2) => {
                assert_eq!(*t, 8, "{name}");
                for (blk, (q, f)) in vals.chunks(32).zip(f16_vals.chunks(32)).enumerate() {
                    let step = f.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                    for (x, y) in q.iter().zip(f) {
                        let tolerance = step / 2.0 + y.abs() * 1e-3;
                        assert!((x - y).abs() <= tolerance, "{name} block {blk}: {x} vs {y}");
                    }
                }
            }
            // convolutions stay f16, the rest f32, unchanged
            _ => {
                assert_eq!(t, f16_t, "{name}");
                assert_eq!(vals, f16_vals, "{name}");
            }
        }
    }
    assert_eq!(b["encoder.conv2.weight"].1, 1);
    assert_eq!(b["decoder.token_embedding.weight"].1, 8);

    // The f16 file requantised is the same file, byte for byte.
    let re = dir.path().join("re.bin");
    let (hp, _) = requantize_ggml(&f16, &re, |_, _| {}).expect("requantises");
    assert_eq!(hp.ftype, 2007);
    assert_eq!(
        std::fs::read(&re).expect("re"),
        std::fs::read(&q8).expect("q8")
    );
    // Only f16 models are requantised.
    let err = requantize_ggml(&q8, &dir.path().join("x.bin"), |_, _| {}).expect_err("q8_0 again");
    assert!(err.to_string().contains("only an f16 model"), "{err}");
    assert!(!dir.path().join("x.bin").exists() && !dir.path().join("x.partial").exists());
}

#[test]
fn rows_q8_0_cannot_hold_are_a_clear_error() {
    let (dir, out) = tiny_model_dir(false);
    let err = convert_ct2(dir.path(), &out, WhisperWeights::Q8_0, |_, _| {}).expect_err("width 8");
    assert!(err.to_string().contains("rows of 8 values"), "{err}");
    assert!(err.to_string().contains("f16"), "{err}");
    assert!(!out.exists() && !out.with_extension("partial").exists());
    convert_ct2(dir.path(), &out, WhisperWeights::F16, |_, _| {}).expect("f16");
    let err = requantize_ggml(&out, &dir.path().join("q.bin"), |_, _| {}).expect_err("width 8");
    assert!(err.to_string().contains("rows of 8 values"), "{err}");
    assert!(!dir.path().join("q.bin").exists() && !dir.path().join("q.partial").exists());
}

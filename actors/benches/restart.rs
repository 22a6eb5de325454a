//! How long a supervised actor takes from a panic to `running` again (the kernel's own
//! restart path; no model reload involved). `cargo bench -p coda-actors --bench restart`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use coda_actors::components::ComponentRegistry;
use coda_actors::hub::{
    EventHub, HubDelivery, HubSettings, Register, StartAt, Subscribe, TypeMask,
};
use coda_actors::kernel::{Kernel, KernelSettings};
use coda_actors::llm::LlmError;
use coda_actors::supervise::{InjectFault, RestartBudget};
use coda_actors::tts::espeak::{EspeakConfig, EspeakEngine};

struct Watch(Arc<Mutex<Vec<(Instant, String, String)>>>);

impl Actor for Watch {
    type Context = Context<Self>;
}

impl Handler<HubDelivery> for Watch {
    type Result = ();
    fn handle(&mut self, msg: HubDelivery, _: &mut Context<Self>) {
        for ev in msg.live() {
            if ev.event_type == coda_protocol::EventType::ComponentStatus {
                let v: serde_json::Value = serde_json::from_str(&ev.json).unwrap_or_default();
                self.0.lock().unwrap().push((
                    Instant::now(),
                    v["data"]["component"].as_str().unwrap_or("").to_string(),
                    v["data"]["state"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
}

fn main() {
    std::panic::set_hook(Box::new(|_| {}));
    let sys = actix_rt::System::new();
    sys.block_on(async {
        let hub = EventHub::start_hub(HubSettings::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let w = Watch(seen.clone()).start();
        hub.addr().do_send(Register {
            client_id: 1,
            recipient: w.recipient(),
        });
        hub.addr().do_send(Subscribe {
            client_id: 1,
            mask: TypeMask::ALL,
            start: StartAt::Live,
        });
        let engine = Arc::new(EspeakEngine::new(EspeakConfig {
            binary: "espeak-ng".into(),
            voice: "en-us".into(),
            rate: 175,
        }));
        let budget = RestartBudget {
            max_restarts: 100_000,
            period: Duration::from_secs(60),
        };
        let k = Kernel::start(
            hub.clone(),
            ComponentRegistry::new(),
            KernelSettings {
                budget,
                ..Default::default()
            },
            Err(LlmError::Unavailable("bench".into())),
            engine,
            Default::default(),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        println!(
            "{:<14} {:>9} {:>9} {:>9}",
            "component", "p50 ms", "p95 ms", "max ms"
        );
        for name in ["orchestrator", "intent_router", "llm", "tts"] {
            let mut ms = Vec::new();
            for _ in 0..200 {
                let n = seen.lock().unwrap().len();
                let t = Instant::now();
                match name {
                    "orchestrator" => k.orchestrator.do_send(InjectFault::PanicInHandler),
                    "intent_router" => k.router.do_send(InjectFault::PanicInHandler),
                    "llm" => k.llm.do_send(InjectFault::PanicInHandler),
                    _ => k.tts.do_send(InjectFault::PanicInHandler),
                }
                loop {
                    let done = seen.lock().unwrap()[n..]
                        .iter()
                        .find(|(_, c, s)| c == name && s == "running")
                        .map(|(at, _, _)| *at);
                    if let Some(at) = done {
                        ms.push(at.duration_since(t).as_secs_f64() * 1000.0);
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            ms.sort_by(f64::total_cmp);
            let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
            println!(
                "{name:<14} {:>9.3} {:>9.3} {:>9.3}",
                q(0.5),
                q(0.95),
                ms[ms.len() - 1]
            );
        }
        System::current().stop();
    });
}

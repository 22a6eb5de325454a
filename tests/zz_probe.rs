mod common;
use common::*;
use serde_json::json;
use std::time::Instant;
#[tokio::test]
async fn probe() {
    let server = Server::start(&[], &[]);
    let url = server.url();
    for i in 0..30 {
        let t = Instant::now();
        let mut c = Client::connect(&url, &[]).await;
        let t1 = t.elapsed();
        match i % 5 {
            0 => {
                c.ping().await;
            }
            1 => {
                c.send_cmd("hello", json!({"protocol_version": "1.0"}), None)
                    .await;
            }
            _ => {}
        }
        let t2 = t.elapsed();
        c.close().await;
        eprintln!("{i}: connect {t1:?} talk {t2:?} total {:?}", t.elapsed());
    }
}

//! The component registry: every subsystem's state, restart count and uptime, as
//! `get_system_info` reports them. Changing a state publishes `component_status`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use coda_protocol::{ComponentInfo, ComponentState, ComponentStatus, SYSTEM_SESSION};

use crate::hub::HubHandle;

#[derive(Debug, Clone)]
struct Entry {
    state: ComponentState,
    restarts: u32,
    since: Instant,
    reason: Option<String>,
}

/// Shared table of component states. Cheap to clone.
#[derive(Clone, Default)]
pub struct ComponentRegistry {
    inner: Arc<RwLock<BTreeMap<String, Entry>>>,
}

impl ComponentRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `component`'s new state and publishes `component_status`.
    pub fn set(
        &self,
        hub: &HubHandle,
        component: &str,
        state: ComponentState,
        reason: Option<String>,
    ) {
        let restarts = {
            let mut map = match self.inner.write() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            let entry = map.entry(component.to_string()).or_insert(Entry {
                state,
                restarts: 0,
                since: Instant::now(),
                reason: None,
            });
            if state == ComponentState::Restarting {
                entry.restarts += 1;
            }
            if entry.state != state || state == ComponentState::Running {
                entry.since = Instant::now();
            }
            entry.state = state;
            entry.reason = reason.clone();
            entry.restarts
        };
        hub.publish(
            SYSTEM_SESSION,
            &ComponentStatus {
                component: component.to_string(),
                state,
                restarts,
                reason,
            },
        );
    }

    /// Every component, sorted by name.
    pub fn snapshot(&self) -> Vec<ComponentInfo> {
        let map = match self.inner.read() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter()
            .map(|(name, e)| ComponentInfo {
                name: name.clone(),
                state: e.state,
                restarts: e.restarts,
                uptime_s: e.since.elapsed().as_secs_f64(),
                reason: e.reason.clone(),
            })
            .collect()
    }
}

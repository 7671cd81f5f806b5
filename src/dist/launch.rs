//! Where this process stands in a job, from the variables `torchrun` sets:
//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`.

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// torchrun's agent already serves the store at the master's address
    /// (`TORCHELASTIC_USE_AGENT_STORE=True`), so rank 0 joins it as a client.
    pub agent_store: bool,
    /// The network interface Gloo connects over (`GLOO_SOCKET_IFNAME`, as
    /// PyTorch reads it); needed when ranks are on different hosts.
    pub interface: Option<String>,
}

impl Launch {
    /// The job this process belongs to, from the environment; `None` when no
    /// launcher set `WORLD_SIZE` (a single process).
    pub fn from_env() -> Result<Option<Launch>> {
        Launch::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Launch::from_env`] over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let number = |name: &str, text: Option<String>| -> Result<usize> {
            let text = text.ok_or_else(|| {
                Error::Distributed(format!("WORLD_SIZE is set but {name} is not"))
            })?;
            text.trim().parse().map_err(|_| {
                Error::Distributed(format!("{name}={text:?} is not a non-negative integer"))
            })
        };
        let world_size = number("WORLD_SIZE", Some(world))?;
        let rank = number("RANK", var("RANK"))?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        if world_size == 0 || rank >= world_size {
            return Err(Error::Distributed(format!(
                "RANK {rank} is not below WORLD_SIZE {world_size}"
            )));
        }
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match var("MASTER_PORT") {
            Some(p) => p.trim().parse().map_err(|_| {
                Error::Distributed(format!("MASTER_PORT={p:?} is not a port number"))
            })?,
            None => 29500,
        };
        let agent_store =
            var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let interface = var("GLOO_SOCKET_IFNAME").filter(|i| !i.is_empty());
        Ok(Some(Launch {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            agent_store,
            interface,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn reads_torchrun_variables_and_refuses_inconsistent_ones() {
        assert_eq!(launch(&[]).unwrap(), None);
        let l = launch(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29600"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.rank, l.world_size, l.local_rank, l.master_port),
            (3, 4, 1, 29600)
        );
        assert_eq!(l.master_addr, "10.0.0.2");
        assert!(!l.agent_store);
        let agent = launch(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ]);
        assert!(agent.unwrap().unwrap().agent_store);
        let defaults = launch(&[("WORLD_SIZE", "2"), ("RANK", "0")])
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                defaults.master_addr.as_str(),
                defaults.master_port,
                defaults.local_rank
            ),
            ("127.0.0.1", 29500, 0)
        );
        for (vars, why) in [
            (vec![("WORLD_SIZE", "2")], "RANK is not"),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "2")],
                "not below WORLD_SIZE",
            ),
            (
                vec![("WORLD_SIZE", "two"), ("RANK", "0")],
                "WORLD_SIZE=\"two\"",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "99999")],
                "MASTER_PORT",
            ),
        ] {
            let err = launch(&vars).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}

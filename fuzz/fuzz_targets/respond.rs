//! Any bytes as a DNS query, over UDP and TCP: `respond` must never panic, never write past the
//! buffer, never exceed the UDP size limit, and always echo the query's ID.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use idetcd::dns::{self, Context, Transport, MAX_UDP_PAYLOAD};
use idetcd::config::Role;
use idetcd::pattern::Pattern;
use idetcd::record::Record;
use idetcd::zone::{Inputs, Snapshot};
use libfuzzer_sys::fuzz_target;

fn snapshot() -> &'static Snapshot {
    static SNAPSHOT: OnceLock<Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let pattern = Pattern::parse("worker{{.ID}}.tf.local.").unwrap();
        let mut members = BTreeMap::new();
        for id in 1..=20 {
            let ipv6 = (id % 2 == 0).then(|| format!("fd00::{id}").parse().unwrap());
            members.insert(id, Record { ipv4: Some([10, 0, 0, id as u8].into()), ipv6, port: Some(53) });
        }
        Snapshot::build(&Inputs { roles: &[Role { name: "worker".into(), pattern: pattern.clone(), ids: 1..=20 }], ttl: 5, serial: 7, nameservers: 3, own_name: Some("worker3.tf.local."), members: std::slice::from_ref(&members) })
    })
}

fuzz_target!(|query: &[u8]| {
    let mut out = vec![0u8; u16::MAX as usize];
    for (transport, limit) in [(Transport::Udp, MAX_UDP_PAYLOAD as usize), (Transport::Tcp, out.len())] {
        let forward: Option<&[u8]> = if query.len() % 3 == 0 { Some(b"\0") } else { None };
        let context = Context { transport, identity_held: query.len() % 2 == 0, forward };
        if let dns::Action::Reply { len, .. } = dns::respond(query, snapshot(), context, &mut out[..limit]) {
            assert!(len >= 12 && len <= limit && out[..2] == query[..2]);
            assert!(out[2] & 0x80 != 0, "every answer is a response");
        }
    }
});

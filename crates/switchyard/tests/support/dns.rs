//! A nameserver on loopback UDP (hickory-proto) answering from a table the
//! test changes: A records and SRV records by name, all with a 1 s TTL; a
//! name can also be made to fail (SERVFAIL).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

#[derive(Default)]
pub struct Zone {
    pub a: HashMap<String, Vec<Ipv4Addr>>,
    /// name -> (priority, weight, port, target)
    pub srv: HashMap<String, Vec<(u16, u16, u16, String)>>,
    pub failing: bool,
}

pub struct Nameserver {
    pub addr: SocketAddr,
    pub zone: Arc<Mutex<Zone>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Nameserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start() -> Nameserver {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let zone = Arc::new(Mutex::new(Zone::default()));
    let table = zone.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(request) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let answer = answer(&request, &table.lock().unwrap());
            let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
        }
    });
    Nameserver { addr, zone, task }
}

fn answer(request: &Message, zone: &Zone) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    response.add_queries(request.queries().to_vec());
    if zone.failing {
        response.set_response_code(ResponseCode::ServFail);
        return response;
    }
    for query in request.queries() {
        let name = query.name().to_ascii().trim_end_matches('.').to_owned();
        let owner = Name::from_ascii(format!("{name}.")).unwrap();
        match query.query_type() {
            RecordType::A => {
                for ip in zone.a.get(&name).into_iter().flatten() {
                    response.add_answer(Record::from_rdata(owner.clone(), 1, RData::A(A(*ip))));
                }
            }
            RecordType::SRV => {
                for (priority, weight, port, target) in zone.srv.get(&name).into_iter().flatten() {
                    let target = Name::from_ascii(format!("{target}.")).unwrap();
                    let srv = SRV::new(*priority, *weight, *port, target);
                    response.add_answer(Record::from_rdata(owner.clone(), 1, RData::SRV(srv)));
                }
            }
            _ => {}
        }
    }
    response
}

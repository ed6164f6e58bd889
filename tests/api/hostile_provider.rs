//! A provider as hostile input (issue 25): replies whose memory cost is out of proportion to
//! their bytes (empty vectors, overlong vectors, answers without dimensions), slow providers
//! that would hold every caller's slot, and cancelled calls whose outbound requests must end
//! with them. The server runs as the real binary where its memory, descriptors and metrics are
//! measured, under `prlimit --as` of 1 GiB where the review saw it abort.

use std::{net::SocketAddr, time::Duration};

use futures_util::future::join_all;
use llm_registry::pb::v1::{self as pb, embedding_service_client::EmbeddingServiceClient};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::{Code, transport::Channel};

use crate::{
    binary::{production_with_fakes_under, start_server, temp_home, terminate},
    embed::{Fixture, model_of, texts},
    fake_provider::{Behaviour, FakeProvider, Flavor},
    helpers::{
        assert_code, audit_events_on, authed, create_database, create_user_on,
        drop_database_blocking, random_api_key, reason, unique_name, wait_until_serving,
    },
};

/// A reply in `flavor`'s documented shape holding about `bytes` of empty vectors.
fn empty_vectors(flavor: Flavor, bytes: usize) -> String {
    let (open, item, close) = match flavor {
        Flavor::OpenAi => (
            r#"{"object":"list","data":["#,
            r#"{"embedding":[],"index":0},"#,
            "]}",
        ),
        Flavor::Cohere => (r#"{"embeddings":{"float":["#, "[],", "]}}"),
        Flavor::Gemini => (r#"{"embeddings":["#, r#"{"values":[]},"#, "]}"),
    };
    let mut body = String::with_capacity(bytes + 64);
    body.push_str(open);
    while body.len() < bytes {
        body.push_str(item);
    }
    body.pop();
    body.push_str(close);
    body
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

/// The open file descriptors of process `pid`.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

async fn create_instance(
    channel: &Channel,
    token: &str,
    id: &str,
    flavor: Flavor,
    endpoint: String,
    dimensions: Option<i32>,
) {
    create_instance_of(channel, token, "alice", id, flavor, endpoint, dimensions).await;
}

async fn create_instance_of(
    channel: &Channel,
    token: &str,
    owner: &str,
    id: &str,
    flavor: Flavor,
    endpoint: String,
    dimensions: Option<i32>,
) {
    pb::llm_instance_service_client::LlmInstanceServiceClient::new(channel.clone())
        .create_instance(authed(
            pb::CreateInstanceRequest {
                parent: format!("users/{owner}"),
                instance_id: id.into(),
                instance: Some(pb::Instance {
                    endpoint,
                    api_standard: flavor.standard().into(),
                    model: model_of(flavor).into(),
                    dimensions,
                    api_key: random_api_key(),
                    ..Default::default()
                }),
            },
            token,
        ))
        .await
        .unwrap();
}

async fn embed(
    channel: &Channel,
    token: &str,
    name: &str,
    inputs: usize,
) -> Result<pb::EmbedResponse, tonic::Status> {
    EmbeddingServiceClient::new(channel.clone())
        .embed(authed(
            pb::EmbedRequest {
                name: name.into(),
                inputs: texts(inputs),
                input_type: pb::EmbeddingInputType::Document as i32,
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// A reply the server must refuse unread as UNAVAILABLE `PROVIDER_BAD_REPLY`, saying why.
#[track_caller]
fn assert_bad_reply<T: std::fmt::Debug>(result: Result<T, tonic::Status>, why: &str) {
    let refused = assert_code(result, Code::Unavailable);
    assert_eq!(reason(&refused), "PROVIDER_BAD_REPLY", "{refused:?}");
    assert!(refused.message().contains(why), "{refused:?}");
}

/// The growth of resident memory the review's replies may cause: the review saw 1.13 GB for
/// one 4 MB reply of empty vectors; what is left is the replies' own bytes in flight and the
/// allocator keeping some of them.
const RSS_GROWTH_BOUND: u64 = 64 * 1024 * 1024;

#[tokio::test]
async fn replies_of_empty_overlong_or_unbounded_vectors_are_refused_in_bounded_memory() {
    let database = unique_name("llmr_test");
    create_database(&database).await;
    let admin = llm_registry::IssuedToken::generate().reveal().to_owned();
    let master = llm_registry::vault::MasterKey::generate();
    let home = temp_home();
    // 1 GiB of address space, where the review saw one 16 MB reply abort the process.
    let mut command = production_with_fakes_under(
        &["prlimit", "--as=1073741824", "--"],
        &home,
        &database,
        &admin,
        &master,
    );
    command
        .env("PROVIDER_MAX_REPLY_BYTES", (8 * 1024 * 1024).to_string())
        .env("PROVIDER_MAX_ANSWER_BYTES", (256 * 1024).to_string());
    let (child, addr, _log) = start_server(command).await;
    let pid = child.id().unwrap();
    let channel = wait_until_serving(addr).await;
    let alice = create_user_on(&channel, &admin, "alice").await;

    for flavor in [Flavor::OpenAi, Flavor::Cohere, Flavor::Gemini] {
        let fake = FakeProvider::start(flavor, 8).await;
        let id = flavor.standard();
        create_instance(&channel, &alice, id, flavor, fake.endpoint(), Some(8)).await;
        let body = empty_vectors(flavor, 4 * 1024 * 1024);
        fake.script((0..8).map(|_| Behaviour::Status {
            status: 200,
            body: body.clone(),
            retry_after: None,
        }));
        let before = rss(pid);
        let name = format!("users/alice/instances/{id}");
        let calls = (0..8).map(|_| embed(&channel, &alice, &name, 1));
        for result in join_all(calls).await {
            assert_bad_reply(result, "more vectors than the batch's 1 inputs");
        }
        let after = rss(pid);
        println!(
            "{flavor:?}: 8 replies of 4 MiB of empty vectors: server RSS {:.1} -> {:.1} MiB",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0
        );
        assert!(
            after.saturating_sub(before) < RSS_GROWTH_BOUND,
            "{flavor:?}: 8 replies of 4 MiB of empty vectors took RSS from {before} to {after}"
        );
        // Still serving, and the instance still works once its provider behaves.
        let answer = embed(&channel, &alice, &name, 2).await.unwrap();
        assert_eq!(answer.embeddings.len(), 2);
    }

    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    create_instance(
        &channel,
        &alice,
        "sized",
        Flavor::OpenAi,
        fake.endpoint(),
        Some(8),
    )
    .await;
    create_instance(
        &channel,
        &alice,
        "unsized",
        Flavor::OpenAi,
        fake.endpoint(),
        None,
    )
    .await;
    let floats = |count: usize| vec!["0.5"; count].join(",");
    // A vector longer than the instance's dimensions.
    fake.script([Behaviour::Status {
        status: 200,
        body: format!(r#"{{"data":[{{"embedding":[{}],"index":0}}]}}"#, floats(9)),
        retry_after: None,
    }]);
    assert_bad_reply(
        embed(&channel, &alice, "sized", 1).await,
        "longer than 8 dimensions",
    );
    // An instance without dimensions is held to the answer size (256 KiB: 65,536 numbers).
    fake.script([Behaviour::Status {
        status: 200,
        body: format!(
            r#"{{"data":[{{"embedding":[{0}],"index":0}},{{"embedding":[{0}],"index":1}}]}}"#,
            floats(40_000)
        ),
        retry_after: None,
    }]);
    assert_bad_reply(
        embed(&channel, &alice, "unsized", 2).await,
        "PROVIDER_MAX_ANSWER_BYTES",
    );
    // A reply larger than PROVIDER_MAX_REPLY_BYTES, refused while streaming.
    fake.script([Behaviour::Oversized(9 * 1024 * 1024)]);
    assert_bad_reply(embed(&channel, &alice, "sized", 1).await, "larger than");
    // And a call whose answer could not fit is refused before anything is sent: 100 inputs
    // of 1,024 dimensions are 400 KiB of vectors.
    create_instance(
        &channel,
        &alice,
        "wide",
        Flavor::OpenAi,
        fake.endpoint(),
        Some(1024),
    )
    .await;
    let sent = fake.request_count();
    let refused = assert_code(
        embed(&channel, &alice, "wide", 100).await,
        Code::InvalidArgument,
    );
    assert!(
        refused.message().contains("PROVIDER_MAX_ANSWER_BYTES"),
        "{refused:?}"
    );
    assert_eq!(fake.request_count(), sent, "nothing was sent");

    terminate(child).await;
    drop_database_blocking(database);
}

#[tokio::test]
async fn a_slow_provider_holds_up_only_the_calls_that_use_it() {
    // Alice's instance answers at once; dave points two instances at a provider that takes
    // seconds, and sends 64 Embeds (the review's 64 held every admission slot).
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let slow = FakeProvider::start(Flavor::OpenAi, 8).await;
    slow.script((0..64).map(|_| Behaviour::Slow(Duration::from_secs(3))));
    let dave = f.app.create_user("dave").await;
    for id in ["slow-a", "slow-b"] {
        create_instance_of(
            &f.app.channel,
            &dave,
            "dave",
            id,
            Flavor::OpenAi,
            slow.endpoint(),
            Some(8),
        )
        .await;
    }
    let daves: Vec<_> = (0..64)
        .map(|i| {
            let channel = f.app.channel.clone();
            let dave = dave.clone();
            let name = format!(
                "users/dave/instances/slow-{}",
                if i % 2 == 0 { "a" } else { "b" }
            );
            tokio::spawn(async move { embed(&channel, &dave, &name, 1).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let timed = std::time::Instant::now();
    crate::helpers::get_instance(&f.app, &f.alice, &f.instance)
        .await
        .unwrap();
    assert!(
        timed.elapsed() < Duration::from_secs(1),
        "GetInstance took {:?}",
        timed.elapsed()
    );
    let timed = std::time::Instant::now();
    f.app
        .users()
        .list_users(authed(pb::ListUsersRequest::default(), &f.app.admin_token))
        .await
        .unwrap();
    assert!(
        timed.elapsed() < Duration::from_secs(1),
        "ListUsers took {:?}",
        timed.elapsed()
    );
    let timed = std::time::Instant::now();
    f.embed_own(&texts(1)).await.unwrap();
    assert!(
        timed.elapsed() < Duration::from_secs(1),
        "Embed took {:?}",
        timed.elapsed()
    );

    // Dave got his share of the provider pool (PROVIDER_CALLS_PER_CALLER, 16), the rest were
    // refused at once with a retry hint.
    let mut answered = 0;
    let mut limited = 0;
    for call in daves {
        match call.await.unwrap() {
            Ok(_) => answered += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), "CALLER_PROVIDER_CALLS_LIMITED");
                limited += 1;
            }
        }
    }
    assert_eq!((answered, limited), (16, 48));
}

/// `GET /metrics` of the server at `addr`: the value of the unlabelled series `name`.
async fn gauge(addr: SocketAddr, name: &str) -> f64 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

#[tokio::test]
async fn cancelled_embeds_end_their_provider_calls_and_give_back_what_they_held() {
    let database = unique_name("llmr_test");
    create_database(&database).await;
    let admin = llm_registry::IssuedToken::generate().reveal().to_owned();
    let master = llm_registry::vault::MasterKey::generate();
    let home = temp_home();
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut command = production_with_fakes_under(&[], &home, &database, &admin, &master);
    command
        .env("METRICS_ADDR", metrics_addr.to_string())
        .env("PROVIDER_CALLS_PER_CALLER", "64")
        // A small pool, filled before the baseline is taken: the cancelled calls' audit writes
        // must not be mistaken for descriptors the provider calls kept.
        .env("DB_MAX_CONNECTIONS", "4");
    let (child, addr, _log) = start_server(command).await;
    let pid = child.id().unwrap();
    let channel = wait_until_serving(addr).await;
    let alice = create_user_on(&channel, &admin, "alice").await;
    // 4 instances x 8 calls, each cancelled by its client after a second, while the provider
    // would take 30 s.
    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    let names: Vec<String> = (0..4)
        .map(|i| format!("users/alice/instances/i{i}"))
        .collect();
    for i in 0..4 {
        create_instance(
            &channel,
            &alice,
            &format!("i{i}"),
            Flavor::OpenAi,
            fake.endpoint(),
            Some(8),
        )
        .await;
    }
    // One call first, so that the outbound connection exists before the baseline is taken.
    embed(&channel, &alice, &names[0], 1).await.unwrap();
    join_all((0..16).map(|_| {
        let mut instances =
            pb::llm_instance_service_client::LlmInstanceServiceClient::new(channel.clone());
        let request = authed(
            pb::ListInstancesRequest {
                parent: "users/alice".into(),
                ..Default::default()
            },
            &alice,
        );
        async move { instances.list_instances(request).await.unwrap() }
    }))
    .await;
    let baseline = without_database(pid);
    let baseline_kinds = socket_peers(pid);
    fake.script((0..32).map(|_| Behaviour::Slow(Duration::from_secs(30))));
    let calls = (0..32).map(|i| {
        let channel = channel.clone();
        let alice = alice.clone();
        let name = names[i % 4].clone();
        async move {
            tokio::time::timeout(Duration::from_secs(1), embed(&channel, &alice, &name, 1))
                .await
                .is_err()
        }
    });
    let in_flight = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        gauge(metrics_addr, "llmr_provider_calls_in_flight").await
    };
    let (cancelled, during) = tokio::join!(join_all(calls), in_flight);
    assert!(
        cancelled.iter().all(|c| *c),
        "every call was cancelled by its client"
    );
    assert_eq!(
        during, 32.0,
        "32 provider calls in flight before the cancels"
    );
    let cancelled_at = std::time::Instant::now();
    let mut settled = None;
    while cancelled_at.elapsed() < Duration::from_secs(1) {
        // Counted before the scrape, whose own socket the server closes just after answering.
        let open = without_database(pid);
        let running = gauge(metrics_addr, "llmr_provider_calls_in_flight").await;
        if running == 0.0 && open <= baseline {
            settled = Some(cancelled_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("cancelled provider calls settled after {settled:?}");
    assert!(
        settled.is_some(),
        "within 1 s of the cancels: provider calls in flight {} (want 0), descriptors {:?} (baseline {baseline_kinds:?})",
        gauge(metrics_addr, "llmr_provider_calls_in_flight").await,
        socket_peers(pid)
    );
    // Each cancelled use is on its instance's record (written just after the cancel).
    let mut recorded = 0;
    for _ in 0..50 {
        recorded = cancelled_uses(&channel, &alice, &names).await;
        if recorded >= 32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(recorded, 32);
    terminate(child).await;
    drop_database_blocking(database);
}

/// The open descriptors of process `pid` but its database connections: the pool may open one
/// more for the cancelled calls' audit writes, which is not what a provider call kept.
fn without_database(pid: u32) -> usize {
    let database_port = crate::helpers::server_url()
        .parse::<sqlx::postgres::PgConnectOptions>()
        .map(|options| options.get_port())
        .unwrap_or(5432);
    descriptors(pid)
        - socket_peers(pid)
            .iter()
            .filter(|port| **port == database_port)
            .count()
}

/// What each open descriptor of process `pid` is (sockets, files), for a failure's message.
fn describe_descriptors(pid: u32) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    found.sort();
    found
}

/// The remote port of each TCP socket process `pid` holds open, by the socket's inode.
fn socket_peers(pid: u32) -> Vec<u16> {
    let mut by_inode = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(remote), Some(inode)) = (fields.get(2), fields.get(9)) {
                let port = remote
                    .rsplit(':')
                    .next()
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
                    .unwrap_or(0);
                by_inode.insert((*inode).to_owned(), port);
            }
        }
    }
    describe_descriptors(pid)
        .iter()
        .filter_map(|target| {
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            by_inode.get(inode).copied()
        })
        .collect()
}

/// The Embed events with outcome CANCELLED on the record of `names`.
async fn cancelled_uses(channel: &Channel, token: &str, names: &[String]) -> usize {
    let mut recorded = 0;
    for name in names {
        recorded += audit_events_on(channel, token, name)
            .await
            .iter()
            .filter(|e| e.method == "EmbeddingService/Embed" && e.outcome == "CANCELLED")
            .inspect(|e| assert!(e.detail.contains("reason=CANCELLED"), "{e:?}"))
            .count();
    }
    recorded
}

/// Whether `text`, with separators and case undone, still spells 8 characters of `key` in a row.
fn spells_key(text: &str, key: &str) -> bool {
    let fold = |s: &str| -> Vec<u8> {
        s.bytes()
            .filter(u8::is_ascii_alphanumeric)
            .map(|b| b.to_ascii_lowercase())
            .collect()
    };
    let (text, key) = (fold(text), fold(key));
    key.windows(8)
        .any(|window| text.windows(8).any(|seen| seen == window))
}

#[tokio::test]
async fn provider_text_reaches_callers_only_from_structured_fields_and_scrubbed() {
    use base64::Engine as _;
    let f = Fixture::start(Flavor::OpenAi, 8).await;
    let key = f.key.clone();

    // A refused key is a fixed message, whatever the provider said (here: the key itself).
    f.fake.script([Behaviour::EchoKey]);
    let refused = assert_code(f.embed_own(&texts(1)).await, Code::FailedPrecondition);
    assert_eq!(reason(&refused), "PROVIDER_REJECTED_KEY");
    assert_eq!(
        refused.message(),
        "the provider refused this instance's key (401, invalid_api_key) [PROVIDER_REJECTED_KEY]"
    );

    // Other failures carry the provider's message field, scrubbed of every spelling of the key
    // the review found the earlier scrubber missing.
    let base64 = base64::engine::general_purpose::STANDARD;
    let groups: Vec<String> = key
        .as_bytes()
        .chunks(7)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let spellings = [
        format!("sent {}", base64.encode(format!("Bearer {key}"))),
        format!("sent {}", base64.encode(format!("z{key}"))),
        format!("sent {}", groups.join(" ")),
        format!("sent {}", key.chars().rev().collect::<String>()),
        format!(
            "sent {}",
            key.chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect::<String>()
        ),
        format!(
            "sent {}",
            key.chars()
                .map(|c| format!("&#{};", c as u32))
                .collect::<String>()
        ),
        format!(
            "sent {}",
            key.encode_utf16()
                .map(|u| format!("{u:04x}"))
                .collect::<String>()
        ),
    ];
    for spelling in spellings {
        f.fake.script([Behaviour::Status {
            status: 400,
            body: crate::fake_provider::error_body(Flavor::OpenAi, &spelling).to_string(),
            retry_after: None,
        }]);
        let refused = assert_code(f.embed_own(&texts(1)).await, Code::InvalidArgument);
        assert_eq!(reason(&refused), "PROVIDER_REJECTED_REQUEST");
        assert!(
            !spells_key(refused.message(), &key),
            "{spelling} -> {refused:?}"
        );
    }
    // A body that is not the documented error shape reaches nobody.
    f.fake.script([Behaviour::Status {
        status: 400,
        body: format!("<html><body>bad request from {key}</body></html>"),
        retry_after: None,
    }]);
    let refused = assert_code(f.embed_own(&texts(1)).await, Code::InvalidArgument);
    assert!(!refused.message().contains("html"), "{refused:?}");

    // A test's message is for those who may test: a reader sees whether it succeeded.
    let bob = f.app.create_user("bob").await;
    let carol = f.app.create_user("carol").await;
    crate::helpers::share(&f.app, &f.alice, &f.instance, "bob", pb::Role::Reader)
        .await
        .unwrap();
    crate::helpers::share(&f.app, &f.alice, &f.instance, "carol", pb::Role::Writer)
        .await
        .unwrap();
    f.fake.script([Behaviour::Status {
        status: 400,
        body: crate::fake_provider::error_body(Flavor::OpenAi, "model overloaded today")
            .to_string(),
        retry_after: None,
    }]);
    f.app
        .embeddings()
        .test_instance(authed(
            pb::TestInstanceRequest {
                name: f.instance.clone(),
            },
            &f.alice,
        ))
        .await
        .unwrap();
    let as_reader = crate::helpers::get_instance(&f.app, &bob, &f.instance)
        .await
        .unwrap()
        .last_test
        .unwrap();
    assert!(!as_reader.succeeded);
    assert_eq!(as_reader.code, "INVALID_ARGUMENT");
    assert_eq!(as_reader.message, "");
    let as_writer = crate::helpers::get_instance(&f.app, &carol, &f.instance)
        .await
        .unwrap()
        .last_test
        .unwrap();
    assert!(
        as_writer.message.contains("model overloaded today"),
        "{as_writer:?}"
    );
}

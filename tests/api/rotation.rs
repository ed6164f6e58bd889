//! Key rotation: keys written under A; the service restarted with B primary and A previous;
//! `rotate-keys` re-encrypts while the service serves; with B alone every key still decrypts to
//! its original value; a second run re-encrypts nothing; a ring without a used key refuses to
//! start, naming the count and the key ids.

use std::process::Output;

use llm_registry::{
    pb::v1 as pb,
    vault::{KeyRing, MasterKey},
};

use crate::{
    binary::{bare_command, temp_home},
    fake_provider::{FakeProvider, Flavor},
    helpers::{
        TestApp, authed, change_behind_the_cache, create_instance_from, create_openai_instance_on,
        database_url, get_instance, random_api_key, set_description, stored_key, trust_fakes,
    },
};

async fn rotate_keys(database: &str, primary: &MasterKey, previous: &[&MasterKey]) -> Output {
    let home = temp_home();
    let previous: Vec<String> = previous.iter().map(|k| k.to_base64().to_string()).collect();
    let output = bare_command(&home)
        .args(["rotate-keys", "--batch-size", "2"])
        .env("LLM_REGISTRY_MODE", "production")
        .env("DATABASE_URL", database_url(database))
        .env("ENCRYPTION_KEY", primary.to_base64().as_str())
        .env("ENCRYPTION_KEYS_PREVIOUS", previous.join(","))
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&home);
    output
}

#[tokio::test]
async fn keys_rotate_while_serving_and_a_missing_key_refuses_start() {
    let a = MasterKey::generate();
    let b = MasterKey::generate();
    let mut app = TestApp::spawn().await;
    app.restart_with(KeyRing::new(a.clone(), vec![]).unwrap())
        .await
        .unwrap();
    let alice = app.create_user("alice").await;
    let mut originals = Vec::new();
    for i in 0..5 {
        let key = random_api_key();
        let overrides = pb::Instance {
            api_key: key.clone(),
            ..Default::default()
        };
        create_instance_from(
            &app,
            &alice,
            "alice",
            &format!("i{i}"),
            "_system/openai-small",
            overrides,
        )
        .await
        .unwrap();
        originals.push((format!("i{i}"), key));
    }
    create_instance_from(
        &app,
        &alice,
        "alice",
        "keyless",
        "_system/openai-small",
        pb::Instance::default(),
    )
    .await
    .unwrap();

    // B becomes primary, A still decrypts; new keys are sealed under B.
    app.restart_with(KeyRing::new(b.clone(), vec![a.clone()]).unwrap())
        .await
        .unwrap();
    let key = random_api_key();
    let overrides = pb::Instance {
        api_key: key.clone(),
        ..Default::default()
    };
    create_instance_from(
        &app,
        &alice,
        "alice",
        "under-b",
        "_system/openai-small",
        overrides,
    )
    .await
    .unwrap();
    originals.push(("under-b".to_owned(), key));

    // Rotate while the service keeps answering reads and writes.
    let reader = {
        let mut client = app.instances();
        let alice = alice.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                let name = format!("users/alice/instances/i{}", round % 5);
                let got = client
                    .get_instance(authed(
                        pb::GetInstanceRequest { name: name.clone() },
                        &alice,
                    ))
                    .await;
                assert!(
                    got.expect("reads go on during rotation")
                        .into_inner()
                        .has_api_key
                );
                let edit = pb::Instance {
                    name,
                    description: format!("round {round}"),
                    ..Default::default()
                };
                let request = pb::UpdateInstanceRequest {
                    instance: Some(edit),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["description".into()],
                    }),
                };
                client
                    .update_instance(authed(request, &alice))
                    .await
                    .expect("writes go on during rotation");
            }
        })
    };
    let output = rotate_keys(&app.database, &b, &[&a]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("re-encrypted 5 key(s)"), "{stdout}");
    assert!(stdout.contains("1 already current"), "{stdout}");
    reader.await.unwrap();
    // The rotation is in the audit trail, batch by batch (5 keys in batches of 2), without secrets.
    let rotation_events: Vec<String> = sqlx::query_scalar(
        "SELECT detail FROM audit_events WHERE caller = 'rotate-keys' AND outcome = 'OK' ORDER BY id",
    )
    .fetch_all(&mut app.db().await)
    .await
    .unwrap();
    assert_eq!(rotation_events.len(), 3, "{rotation_events:?}");
    assert!(rotation_events[0].starts_with("re-encrypted 2 key(s) under key"));

    // B alone: every key decrypts to its original value.
    app.restart_with(KeyRing::new(b.clone(), vec![]).unwrap())
        .await
        .unwrap();
    for (handle, key) in &originals {
        assert_eq!(
            stored_key(&app, "alice", handle).await.as_deref(),
            Some(key.as_str()),
            "{handle}"
        );
    }
    assert_eq!(stored_key(&app, "alice", "keyless").await, None);

    // A second run has nothing to do.
    let output = rotate_keys(&app.database, &b, &[]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("re-encrypted 0 key(s)"), "{stdout}");
    assert!(stdout.contains("6 already current"), "{stdout}");

    // rotate-keys itself refuses a ring that cannot open what is stored.
    let c = MasterKey::generate();
    let output = rotate_keys(&app.database, &c, &[]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains(&b.id()));

    // A ring that lacks B refuses to start, naming the count and B's id.
    let refusal = app
        .restart_with(KeyRing::new(c.clone(), vec![a.clone()]).unwrap())
        .await
        .unwrap_err();
    let message = format!("{refusal:#}");
    assert!(message.contains("6 API key(s)"), "{message}");
    assert!(message.contains(&b.id()), "{message}");
    assert!(!message.contains(b.to_base64().as_str()));
}

/// A rotation re-seals keys without touching the read cache: answers cached before it stay
/// (the rows' scopes do not move), an Embed answered from the cache still opens its key (the
/// old ciphertext, with the ring the server started with) and reaches the provider with the
/// right key, and any other change still shows at once afterwards.
#[tokio::test]
async fn a_rotation_keeps_cached_answers_and_cached_keys_still_open() {
    let a = MasterKey::generate();
    let b = MasterKey::generate();
    let fake = FakeProvider::start(Flavor::OpenAi, 8).await;
    // The serving replica already knows the key the rotation moves to, as in a rollout.
    let app = TestApp::spawn_with_ring(KeyRing::new(a.clone(), vec![b.clone()]).unwrap(), |s| {
        trust_fakes(s)
    })
    .await;
    let alice = app.create_user("alice").await;
    create_openai_instance_on(&app.channel, &alice, "alice", "i1", fake.endpoint()).await;
    let key = stored_key(&app, "alice", "i1").await.unwrap();
    let embed = || {
        let mut client = app.embeddings();
        let alice = alice.clone();
        async move {
            client
                .embed(authed(
                    pb::EmbedRequest {
                        name: "alice/i1".into(),
                        inputs: vec!["hello".into()],
                        input_type: 0,
                    },
                    &alice,
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let name = "users/alice/instances/i1";
    embed().await.expect("the first Embed");
    let before = get_instance(&app, &alice, name).await.unwrap();

    // Behind the cache (triggers off, no scope moves), then the rotation: only a cache that the
    // rotation left in place still answers the old description.
    change_behind_the_cache(
        &app,
        &["UPDATE instances SET description = 'changed behind the cache'"],
    )
    .await;
    let output = rotate_keys(&app.database, &b, &[&a]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stored_under: String = sqlx::query_scalar("SELECT api_key_key_id FROM instances")
        .fetch_one(&mut app.db().await)
        .await
        .unwrap();
    assert_eq!(stored_under, b.id(), "the key was re-sealed under B");
    assert_eq!(
        get_instance(&app, &alice, name).await.unwrap(),
        before,
        "the rotation left the cached answer in place"
    );

    // The cached Embed target holds the ciphertext under A: it still opens, to the same key.
    let sent_before = fake.request_count();
    embed().await.expect("an Embed after the rotation");
    let recorded = fake.recorded();
    assert_eq!(recorded.len(), sent_before + 1);
    assert_eq!(
        recorded.last().and_then(|r| r.header("authorization")),
        Some(format!("Bearer {key}"))
    );

    // Any other change still shows at once, and the Embed then reads the key sealed under B.
    set_description(&app, &alice, name, "after the rotation").await;
    assert_eq!(
        get_instance(&app, &alice, name).await.unwrap().description,
        "after the rotation"
    );
    embed().await.expect("an Embed with the re-sealed key");
    assert_eq!(
        fake.recorded()
            .last()
            .and_then(|r| r.header("authorization")),
        Some(format!("Bearer {key}"))
    );
}

//! The read cache's rules, tested on the cache alone (the freshness protocol end to end is
//! tests/api/read_cache.rs).

use super::*;
use crate::domain::names::Handle;

fn alice() -> UserPrincipal {
    UserPrincipal::new(7, Handle::parse("user", "alice").unwrap(), false)
}

fn fresh() -> Fresh {
    Fresh::after_a_round_applied()
}

#[test]
fn a_changed_scope_drops_only_the_answers_that_depend_on_it() {
    let cache = ReadCache::new(100);
    cache.apply_round(&[]);
    let start = cache.read_start();
    cache.remember_principal(start, Deps::new().with(Some(7), 3), [1; 32], alice());
    cache.remember_principal(start, Deps::new().with(Some(8), 0), [2; 32], alice());
    assert_ne!(
        scope(ScopeKind::User, 7),
        scope(ScopeKind::Instance, 7),
        "kinds do not collide"
    );
    assert!(cache.principal(&fresh(), &[1; 32]).is_some());
    // Scope 7 moved to 4: its answer goes, scope 8's stays.
    cache.apply_round(&[(7, 4)]);
    assert!(cache.principal(&fresh(), &[1; 32]).is_none());
    assert!(cache.principal(&fresh(), &[2; 32]).is_some());
    // An answer read before the move is not taken; one read after it is.
    let start = cache.read_start();
    cache.remember_principal(start, Deps::new().with(Some(7), 3), [1; 32], alice());
    assert!(cache.principal(&fresh(), &[1; 32]).is_none());
    cache.remember_principal(start, Deps::new().with(Some(7), 4), [1; 32], alice());
    assert!(cache.principal(&fresh(), &[1; 32]).is_some());
    // An older report of a scope does not lower what is known.
    cache.apply_round(&[(7, 2)]);
    assert!(cache.principal(&fresh(), &[1; 32]).is_some());
}

#[test]
fn nothing_is_added_before_the_first_round_or_across_a_reset() {
    let cache = ReadCache::new(100);
    let before = cache.read_start();
    cache.apply_round(&[]);
    cache.remember_principal(before, Deps::new().with(Some(7), 0), [1; 32], alice());
    assert!(
        cache.principal(&fresh(), &[1; 32]).is_none(),
        "read before any round"
    );
    let start = cache.read_start();
    // A reset (too many known counters) forgets changes a read in flight may have missed.
    let many: Vec<(i64, i64)> = (1..=2000).map(|scope| (scope, 1)).collect();
    cache.apply_round(&many);
    cache.remember_principal(start, Deps::new().with(Some(7), 0), [1; 32], alice());
    assert!(
        cache.principal(&fresh(), &[1; 32]).is_none(),
        "read across a reset"
    );
    // A round with too many changes to list resets too.
    let start = cache.read_start();
    cache.remember_principal(start, Deps::new().with(Some(7), 0), [1; 32], alice());
    assert!(cache.principal(&fresh(), &[1; 32]).is_some());
    let in_flight = cache.read_start();
    cache.reset_round();
    assert!(
        cache.principal(&fresh(), &[1; 32]).is_none(),
        "every answer dropped"
    );
    cache.remember_principal(in_flight, Deps::new().with(Some(7), 0), [1; 32], alice());
    assert!(
        cache.principal(&fresh(), &[1; 32]).is_none(),
        "read across the reset"
    );
}

#[test]
fn a_full_cache_drops_its_older_generation_keeps_what_is_used_and_zero_turns_it_off() {
    // Capacity 10: the young generation ages when it would pass 5 with the next answer.
    let cache = ReadCache::new(10);
    cache.apply_round(&[]);
    let start = cache.read_start();
    let add = |n: u8| cache.remember_principal(start, Deps::new(), [n; 32], alice());
    let held = |n: u8| cache.principal(&fresh(), &[n; 32]).is_some();
    for n in 0..4 {
        add(n);
    }
    add(4); // ages: old {0, 1, 2, 3}, young {4}
    assert!(
        held(1),
        "found in the old generation, moved back to the young one"
    );
    add(5);
    add(6);
    add(7); // ages again: {0, 2, 3} dropped; old {4, 1, 5, 6}, young {7}
    for n in [0, 2, 3] {
        assert!(
            !held(n),
            "{n} was not used since the older generation began"
        );
    }
    for n in [1, 4, 5, 6, 7] {
        assert!(held(n), "{n} is in a generation still held");
    }
    for n in 8..200 {
        add(n);
        assert!(cache.len() <= 10, "never more than the capacity");
    }
    let off = ReadCache::new(0);
    off.apply_round(&[]);
    off.remember_principal(off.read_start(), Deps::new(), [0; 32], alice());
    assert!(off.principal(&fresh(), &[0; 32]).is_none());
}

//! The data plane's shards wait for each other with futures' oneshot channels (a request's task
//! on one shard awaits the answer the partition's owner sends from another), so glommio tasks
//! are woken, and their wakers dropped, on foreign threads all the time. glommio 0.9 could free
//! a task early there (a foreign drop counted its references down to zero and back up while the
//! task's thread dropped its join handle); a data plane died of it with SIGSEGV in
//! `RawTask::do_wake` under steady produce, on a machine with more busy threads than cores. The
//! vendored glommio hands foreign wakers home instead (vendor/README.md). This drives the same
//! pattern hard, with more threads than cores so that threads are preempted in the middle of
//! wakes: every request must be answered exactly once and nothing may crash. (The race needs a
//! preemption inside a few instructions; this did not hit it in six million rounds against the
//! unpatched crate, so it guards the patched path rather than reproducing the crash.)

use futures::channel::oneshot;
use glommio::channels::shared_channel;
use glommio::LocalExecutorBuilder;

const ROUNDS: usize = 1_000_000;
const IN_FLIGHT: usize = 64;
/// Pairs of shards at once: more threads than cores, so that a thread is preempted in the
/// middle of a wake now and then, as on a busy machine.
const PAIRS: usize = 6;

#[test]
fn tasks_woken_from_another_shard_are_freed_once() {
    let pairs: Vec<_> = (0..PAIRS).map(|_| std::thread::spawn(pair)).collect();
    for p in pairs {
        p.join().unwrap();
    }
}

fn pair() {
    let (jobs_tx, jobs_rx) = shared_channel::new_bounded::<oneshot::Sender<u64>>(1024);
    // The "owner" shard answers every request it is handed, from its own thread.
    let owner = LocalExecutorBuilder::default()
        .name("owner")
        .spawn(move || async move {
            let jobs = jobs_rx.connect().await;
            let mut n = 0u64;
            while let Some(reply) = jobs.recv().await {
                n += 1;
                let _ = reply.send(n);
            }
            n
        })
        .unwrap();
    // The "connection" shard: per request, a task that hands a oneshot to the owner and awaits
    // it (woken from the owner's thread), and a writer that awaits the task's join handle and
    // drops it at once, as `conn::serve` does.
    let conn = LocalExecutorBuilder::default()
        .name("conn")
        .spawn(move || async move {
            let jobs = std::rc::Rc::new(jobs_tx.connect().await);
            let (tasks_tx, tasks_rx) = glommio::channels::local_channel::new_bounded(IN_FLIGHT);
            let writer = glommio::spawn_local(async move {
                let mut sum = 0u64;
                while let Some(task) = tasks_rx.recv().await {
                    let task: glommio::Task<u64> = task;
                    sum += task.await;
                }
                sum
            });
            for _ in 0..ROUNDS {
                let jobs = jobs.clone();
                let task = glommio::spawn_local(async move {
                    let (tx, rx) = oneshot::channel();
                    jobs.send(tx).await.expect("owner gone");
                    rx.await.expect("owner dropped the reply")
                });
                tasks_tx.send(task).await.expect("writer gone");
            }
            drop(tasks_tx);
            let sum = writer.await;
            drop(jobs);
            sum
        })
        .unwrap();
    let sum = conn.join().unwrap();
    let answered = owner.join().unwrap();
    assert_eq!(answered, ROUNDS as u64);
    assert_eq!(sum, (1..=ROUNDS as u64).sum::<u64>());
}

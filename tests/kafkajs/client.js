// Drives Sluice with kafkajs (a pure JavaScript client with its own protocol code) and prints
// what it saw as one JSON object; tests/test_kafkajs.py judges it.
//
//   node client.js BOOTSTRAP TOPIC COUNT
//
// Creates TOPIC with 3 partitions, sends COUNT records (keys, values, headers) with an
// idempotent producer, half uncompressed and half gzip, reads them back in a consumer group
// from the beginning, commits, and reads the group's committed offsets and the topic's offsets
// with the admin client.
const { Kafka, logLevel, CompressionTypes, Partitioners } = require('kafkajs')

const [bootstrap, topic, countArg] = process.argv.slice(2)
const count = Number(countArg)
const PARTITIONS = 3
const kafka = new Kafka({ clientId: 'sluice-kafkajs', brokers: [bootstrap], logLevel: logLevel.WARN })

function record(i) {
  return { partition: i % PARTITIONS, key: `k${i}`, value: `v${i}-${'x'.repeat(i % 200)}`, headers: { idx: String(i) } }
}

async function main() {
  const admin = kafka.admin()
  await admin.connect()
  const created = await admin.createTopics({ topics: [{ topic, numPartitions: PARTITIONS }], waitForLeaders: true })

  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  const sent = []
  const half = Math.floor(count / 2)
  for (const [from, to, compression] of [[0, half, CompressionTypes.None], [half, count, CompressionTypes.GZIP]]) {
    for (let start = from; start < to; start += 500) {
      const messages = []
      for (let i = start; i < Math.min(to, start + 500); i++) messages.push(record(i))
      for (const r of await producer.send({ topic, acks: -1, compression, messages })) {
        sent.push({ partition: r.partition, baseOffset: Number(r.baseOffset), errorCode: r.errorCode })
      }
    }
  }
  await producer.disconnect()

  const groupId = `${topic}-group`
  const consumer = kafka.consumer({ groupId, sessionTimeout: 6000, heartbeatInterval: 1000 })
  await consumer.connect()
  await consumer.subscribe({ topics: [topic], fromBeginning: true })
  const received = []
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`consumed ${received.length} of ${count} in 60 s`)), 60000)
    consumer.run({
      autoCommit: false,
      eachBatch: async ({ batch, resolveOffset }) => {
        for (const m of batch.messages) {
          received.push({ partition: batch.partition, offset: Number(m.offset), key: m.key.toString(), value: m.value.toString(), idx: m.headers.idx.toString() })
          resolveOffset(m.offset)
        }
        const last = batch.messages[batch.messages.length - 1]
        if (last) await consumer.commitOffsets([{ topic, partition: batch.partition, offset: String(Number(last.offset) + 1) }])
        if (received.length >= count) { clearTimeout(timer); resolve() }
      },
    }).catch(reject)
  })
  await consumer.disconnect()

  const committed = await admin.fetchOffsets({ groupId, topics: [topic] })
  const offsets = await admin.fetchTopicOffsets(topic)
  await admin.disconnect()
  console.log(JSON.stringify({
    created,
    sent,
    received,
    committed: committed[0].partitions.map(p => ({ partition: p.partition, offset: Number(p.offset) })),
    offsets: offsets.map(o => ({ partition: o.partition, low: Number(o.low), high: Number(o.high) })),
  }))
}

main().catch(e => { console.error('FAILED', e); process.exit(1) })

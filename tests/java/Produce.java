// Kafka's own Java producer, for tests: reads "codec<TAB>key<TAB>value" lines on stdin and sends
// each as one record through a producer with that compression.type (none, gzip, snappy, lz4,
// zstd). With a third argument "null-header", each record also carries a header whose value is
// null. Run in source-file mode:
//   java -cp "<kafka jars>/*" tests/java/Produce.java BOOTSTRAP TOPIC [null-header]
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.Future;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class Produce {
    public static void main(String[] args) throws Exception {
        boolean nullHeader = args.length > 2 && args[2].equals("null-header");
        Map<String, KafkaProducer<byte[], byte[]>> producers = new HashMap<>();
        List<Future<RecordMetadata>> acks = new ArrayList<>();
        BufferedReader in = new BufferedReader(
            new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        KafkaProducer<byte[], byte[]> previous = null;
        while ((line = in.readLine()) != null) {
            String[] parts = line.split("\t", 3);
            KafkaProducer<byte[], byte[]> producer =
                producers.computeIfAbsent(parts[0], codec -> open(args[0], codec));
            ProducerRecord<byte[], byte[]> record = new ProducerRecord<>(
                args[1], null, parts[1].getBytes(StandardCharsets.UTF_8),
                parts[2].getBytes(StandardCharsets.UTF_8));
            if (nullHeader) {
                record.headers().add(new RecordHeader("trace", null));
            }
            if (previous != null && previous != producer) {
                previous.flush();  // records keep their order across codecs
            }
            previous = producer;
            acks.add(producer.send(record));
        }
        for (Future<RecordMetadata> ack : acks) {
            ack.get();
        }
        for (KafkaProducer<byte[], byte[]> producer : producers.values()) {
            producer.close();
        }
    }

    static KafkaProducer<byte[], byte[]> open(String bootstrap, String codec) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("compression.type", codec);
        props.put("acks", "all");
        props.put("linger.ms", "50");  // several records per compressed batch
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        return new KafkaProducer<>(props);
    }
}

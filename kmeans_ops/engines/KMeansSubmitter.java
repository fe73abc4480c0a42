// One Hadoop client JVM for every job of a run (kmeans_ops.engines.yarn.Submitter starts it).
//
// Each line on stdin is the argument list of one Hadoop Streaming job (generic options, then the
// streaming options, separated by tabs). The job is submitted as `hadoop jar hadoop-streaming.jar
// ... -background` would submit it (ToolRunner + StreamJob: the same option parsing), and one line
// is answered on stdout:
//
//     OK <tab> <application id> <tab> <tracking URL>
//     ERR <tab> <exit status or exception class>
//
// The client's own log goes to stderr. Starting a client JVM costs 2-3 s per job on a small
// machine (class loading of the Hadoop client, its configuration and security setup); a run of
// 20 iterations pays it once. When stdin closes, the JVM exits.

import java.io.BufferedReader;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.streaming.StreamJob;
import org.apache.hadoop.util.ToolRunner;

public final class KMeansSubmitter {
    /** StreamJob, with access to the job it submitted. */
    static final class Job extends StreamJob {
        String applicationId() {
            return running_ == null ? null : running_.getID().toString().replace("job_", "application_");
        }

        String trackingUrl() {
            return running_ == null ? "" : running_.getTrackingURL();
        }
    }

    public static void main(String[] ignored) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        PrintStream reply = new PrintStream(new FileOutputStream(FileDescriptor.out), true, "UTF-8");
        System.setOut(System.err); // whatever the client prints is log, not an answer
        String line;
        while ((line = in.readLine()) != null) {
            if (line.isEmpty()) {
                continue;
            }
            try {
                Job job = new Job();
                int status = ToolRunner.run(new Configuration(), job, line.split("\t", -1));
                String id = job.applicationId();
                reply.println(status == 0 && id != null ? "OK\t" + id + "\t" + job.trackingUrl() : "ERR\t" + status);
            } catch (Throwable error) { // the client's failure is the job's, not the JVM's
                error.printStackTrace();
                reply.println("ERR\t" + error.getClass().getName());
            }
        }
        System.exit(0); // the client's IPC threads would keep the JVM alive
    }
}

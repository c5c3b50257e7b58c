import java.nio.file.Path;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.logging.LogConfigurator;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.painless.PainlessPlugin;
import org.opensearch.plugins.Plugin;
import org.opensearch.transport.Netty4Plugin;

/**
 * One OpenSearch node in this JVM, from the jars on the classpath: {@code java -cp ... OpenSearchNode HOME}.
 *
 * <p>The distribution's command-line bootstrap expects an unpacked distribution with its plugins directory
 * (and refuses to run as root); the Node API takes plugin classes straight from the classpath instead, as
 * OpenSearch's own test clusters do. Settings come from HOME/config/opensearch.yml, logging from
 * HOME/config/log4j2.properties.
 */
public final class OpenSearchNode {
    /** Netty for HTTP and transport; analysis-common for asciifolding, the language analyzers and stemmers
     *  (it extends painless, hence painless too). */
    private static final List<Class<? extends Plugin>> PLUGINS =
        List.of(Netty4Plugin.class, CommonAnalysisPlugin.class, PainlessPlugin.class);

    private static final class ClasspathNode extends Node {
        ClasspathNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    public static void main(String[] args) throws Exception {
        Path home = Path.of(args[0]).toAbsolutePath();
        Settings settings = Settings.builder().put("path.home", home.toString()).build();
        Environment environment =
            InternalSettingsPreparer.prepareEnvironment(settings, Map.of(), home.resolve("config"), () -> "newsmon");
        LogConfigurator.registerErrorListener();
        LogConfigurator.setNodeName(environment.settings().get("node.name"));  // the log lines' %node_name
        LogConfigurator.configure(environment);
        Node node = new ClasspathNode(environment, PLUGINS);
        // The node's threads are daemons: this thread keeps the JVM up until SIGTERM closes the node.
        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
                node.awaitClose(30, TimeUnit.SECONDS);
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "shutdown"));
        node.start();
        closed.await();
    }
}

/**
 * operator: reconciles MailDomain and MailUser custom resources (charts/postino/crds) into the
 * directory through the admin API. Every replica campaigns for a coordination.k8s.io Lease; only the
 * leader watches and reconciles, the others stand by (`postino run operator`; not part of `postino up`).
 */
import type { Runtime, Service } from '../core/runtime.ts';
import { AdminClient } from './admin-client.ts';
import { Controller } from './controller.ts';
import { KubeStore, loadKubeConfig, watchNamespace } from './kube.ts';
import { LeaderElector } from './leader.ts';

export async function start(rt: Runtime): Promise<Service> {
  const log = rt.logger.child({ service: 'operator' });
  const kc = loadKubeConfig();
  const namespace = watchNamespace(rt.config.operatorNamespace, kc);
  const store = new KubeStore(kc);
  const admin = new AdminClient(rt.config.adminUrl, rt.config.adminToken);
  const controller = new Controller({
    kc,
    store,
    deps: { admin, store },
    namespace,
    resyncMs: rt.config.operatorResync,
    logger: log,
  });
  const elector = new LeaderElector(
    kc,
    {
      namespace,
      name: rt.config.operatorLeaseName,
      identity: rt.node,
      leaseMs: rt.config.operatorLease,
      onStarted: () => void controller.start(),
      onStopped: () => void controller.stop(),
    },
    log,
  );
  elector.start();
  log.info({ namespace, admin: rt.config.adminUrl, lease: rt.config.operatorLeaseName }, 'operator started');
  return {
    stop: async () => {
      await elector.stop();
      await controller.stop();
    },
  };
}

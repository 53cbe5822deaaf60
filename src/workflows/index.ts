export { jobWorkflow } from './job-workflow';
export { reconcileLedgerWorkflow } from './reconcile-workflow';
export { reservationWorkflow } from './reservation-workflow';

output "rest_url" {
  description = "stewardctl --server for this fleet (HTTPS; trust the control plane's ca.pem)."
  value       = module.steward.rest_url
}

output "controlplane_public_ip" {
  description = "SSH to the control plane here (from admin_cidrs)."
  value       = module.steward.controlplane_public_ip
}

output "grpc_url" {
  description = "The gateway URL the agents use."
  value       = module.steward.grpc_url
}

output "agent_host_ids" {
  description = "Host IDs the agents enroll as."
  value       = module.steward.agent_host_ids
}

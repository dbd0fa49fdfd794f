output "controlplane_public_ip" {
  description = "Public address of the control plane (REST API and SSH, from admin_cidrs only)."
  value       = aws_eip.controlplane.public_ip
}

output "controlplane_private_ip" {
  description = "Private address of the control plane, the one agents connect to."
  value       = local.controlplane_private_ip
}

output "grpc_url" {
  description = "The gateway URL agents use (server.url in agent.toml)."
  value       = local.grpc_url
}

output "rest_url" {
  description = "The REST API for stewardctl --server; its certificate is from the control plane's CA (stewardctl --ca-cert ca.pem)."
  value       = "https://${aws_eip.controlplane.public_ip}:${var.rest_port}"
}

output "agent_host_ids" {
  description = "Host IDs the agent VMs enroll as, in VM order."
  value       = [for i in range(var.agent_count) : "${var.name_prefix}-agent-${i + 1}"]
}

output "agent_private_ips" {
  description = "Private addresses of the agent VMs."
  value       = aws_instance.agent[*].private_ip
}

output "agent_public_ips" {
  description = "Public addresses of the agent VMs (SSH from admin_cidrs only)."
  value       = aws_instance.agent[*].public_ip
}

output "security_group_ids" {
  description = "Security groups, to add rules outside the module (for example PostgreSQL)."
  value = {
    controlplane = aws_security_group.controlplane.id
    agent        = aws_security_group.agent.id
  }
}

output "vpc_id" {
  description = "The VPC the module created."
  value       = aws_vpc.this.id
}

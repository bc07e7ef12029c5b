/* commands.h - the mx CLI's subcommands; each takes the argv that starts at its own name
 * and returns the process exit status. main.c only dispatches. */
#ifndef MX_CLI_COMMANDS_H
#define MX_CLI_COMMANDS_H

int mx_cmd_client(int argc, char **argv);
int mx_cmd_cluster(int argc, char **argv);
int mx_cmd_generate(int argc, char **argv);
int mx_cmd_golden(int argc, char **argv);
int mx_cmd_info(int argc, char **argv);
int mx_cmd_make_model(int argc, char **argv);
int mx_cmd_plan(int argc, char **argv);
int mx_cmd_tokenize(int argc, char **argv);
int mx_cmd_detokenize(int argc, char **argv);
int mx_cmd_expert_stats(int argc, char **argv);
int mx_cmd_plan_experts(int argc, char **argv);

#endif

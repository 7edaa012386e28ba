/* Logging: one line per event with time, level and component.
 *
 * The level is checked before any formatting happens, so a debug line in a hot path costs a
 * compare when debug logging is off. Lines go to stderr in one write(2) each, so lines from
 * the engine thread and the loop thread never interleave mid-line. */
#ifndef SLUICE_COMMON_LOG_H
#define SLUICE_COMMON_LOG_H

enum log_level { LOG_LEVEL_DEBUG = 0, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR, LOG_LEVEL_OFF };

extern enum log_level log_threshold;

/* Sets the component name printed on every line ("controller", "worker", ...). */
void log_init(const char *component);
void log_set_level(enum log_level level);
/* Parses "debug", "info", "warn"/"warning", "error", "off"; returns -1 when unknown. */
int log_level_parse(const char *name);

void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define LOG_AT(level, ...)                                                                          \
    do {                                                                                           \
        if ((level) >= log_threshold) log_write((level), __FILE__, __LINE__, __VA_ARGS__);         \
    } while (0)
#define log_debug(...) LOG_AT(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...) LOG_AT(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...) LOG_AT(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) LOG_AT(LOG_LEVEL_ERROR, __VA_ARGS__)

#endif
